"""Starts JupyterLab inside a Slurm job, for the gateway's reverse proxy to reach.

Copied by the gateway into the job's directory and run there by the job-side Python, on the
host or inside a container image (``gateway/runtimes/``). It never contacts the gateway: the
server picks a free port itself (``--ServerApp.port=0``, so two labs on one node never race for
a port) and, once it listens, this launcher reports it in ``lab.json`` in the job's directory
(``{"port": N, "pid": P, "base_url": ...}``, written atomically, no token), where the gateway
reads the port. It reports its own server: no pid is assumed to survive a container runtime.
As soon as it runs (JupyterLab imported), it writes the exit record ``exit.json``
(``{"status": "started"}``); a lab whose image lacks JupyterLab leaves none, and the batch
script records a launch error.

The server's token is read from the 0600 file ``lab.token`` in the job's directory into this
process's ``JUPYTER_TOKEN``, never from a command line. JupyterLab normally copies the token into
every page it serves; this server blanks it through jupyterlab_server's ``page_config_hook``,
because the gateway injects the token upstream and the browser must never see it (JupyterHub's
single-user server does the same).

Before the gateway sends the token over a connection, the server proves it holds it:
``<base_url>hpcgw/proof?nonce=N`` answers ``{"address": "ip:port", "proof": hex}``, where the
address is the one this server accepted the connection on and the proof is
HMAC-SHA256(token, "hpcgw lab proof v1|N|address") (``gateway/tokens.py`` holds the gateway's
side). It needs no authentication and reveals nothing about the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from tornado import web

PROOF_LABEL = "hpcgw lab proof v1"
# In the job's directory (the working directory): the token, the report, the exit record.
TOKEN_FILE, REPORT_FILE, EXIT_RECORD = "lab.token", "lab.json", "exit.json"


def _without_token(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
    page_config["token"] = ""
    return page_config


class ProofHandler(web.RequestHandler):  # type: ignore[misc]
    """Answers the gateway's identity challenge on the connection it arrived on."""

    def initialize(self, token: str) -> None:
        self._token = token.encode()

    def get(self) -> None:
        nonce = self.get_query_argument("nonce", "")
        if not 16 <= len(nonce) <= 128 or not nonce.isascii():
            raise web.HTTPError(400)
        host, port = self.request.connection.stream.socket.getsockname()[:2]
        address = f"{host}:{port}"
        message = f"{PROOF_LABEL}|{nonce}|{address}".encode()
        self.set_header("Cache-Control", "no-store")
        self.finish({"address": address,
                     "proof": hmac.new(self._token, message, hashlib.sha256).hexdigest()})


class GatewayServerApp(ServerApp):  # type: ignore[misc]
    """jupyter_server (with its JupyterLab extension) whose pages carry no token, and which
    answers the gateway's identity challenge."""

    def init_webapp(self) -> None:
        self.tornado_settings["page_config_hook"] = _without_token
        super().init_webapp()
        proof = url_path_join(self.base_url, "hpcgw/proof")
        self.web_app.add_handlers(".*$", [(proof, ProofHandler,
                                           {"token": os.environ["JUPYTER_TOKEN"]})])

    def write_server_info_file(self) -> None:
        """jupyter_server's own info file, then the gateway's report (the server listens)."""
        super().write_server_info_file()
        write_json(REPORT_FILE, {"port": self.port, "pid": os.getpid(),
                                 "base_url": self.base_url})


def write_json(path: str, value: dict[str, Any]) -> None:
    """``value`` as the JSON file ``path``, replaced whole (never seen half-written)."""
    partial = Path(path + ".part")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def usable_home() -> None:
    """Point ``HOME`` at the working directory when it names no directory here (shared with
    runner.py: each launcher is copied into the job's directory on its own)."""
    home = os.environ.get("HOME", "")
    if not os.path.isdir(home):
        print(f"hpcgw: HOME ({home or 'unset'}) is not a directory here; using {os.getcwd()}",
              flush=True)
        os.environ["HOME"] = os.getcwd()


def main() -> None:
    os.environ["JUPYTER_TOKEN"] = Path(TOKEN_FILE).read_text().strip()
    usable_home()
    write_json(EXIT_RECORD, {"status": "started"})
    GatewayServerApp.launch_instance()


if __name__ == "__main__":
    main()
