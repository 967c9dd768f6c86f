"""Starts JupyterLab inside a Slurm job, for the gateway's reverse proxy to reach.

Copied by the gateway into the job's directory and run (``exec``'d, so it keeps the batch
script's pid) by the job-side Python. It never contacts the gateway: the server picks a free
port itself (``--ServerApp.port=0``, so two labs on one node never race for a port) and
jupyter_server writes ``$JUPYTER_RUNTIME_DIR/jpserver-<pid>.json`` once it listens; the batch
script links that file to ``lab.json`` before exec, and the gateway reads the port from it.

The server's token comes from ``JUPYTER_TOKEN`` (set by the batch script from the 0600
``lab.token`` file), never from the command line. JupyterLab normally copies the token into
every page it serves; this server blanks it through jupyterlab_server's ``page_config_hook``,
because the gateway injects the token upstream and the browser must never see it (JupyterHub's
single-user server does the same).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.serverapp import ServerApp


def _without_token(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
    page_config["token"] = ""
    return page_config


class GatewayServerApp(ServerApp):  # type: ignore[misc]
    """jupyter_server (with its JupyterLab extension) whose pages carry no token."""

    def init_webapp(self) -> None:
        self.tornado_settings["page_config_hook"] = _without_token
        super().init_webapp()


if __name__ == "__main__":
    GatewayServerApp.launch_instance()
