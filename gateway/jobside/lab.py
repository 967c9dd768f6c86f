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

Before the gateway sends the token over a connection, the server proves it holds it:
``<base_url>hpcgw/proof?nonce=N`` answers ``{"address": "ip:port", "proof": hex}``, where the
address is the one this server accepted the connection on and the proof is
HMAC-SHA256(token, "hpcgw lab proof v1|N|address") (``gateway/tokens.py`` holds the gateway's
side). It needs no authentication and reveals nothing about the token.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import url_path_join
from tornado import web

PROOF_LABEL = "hpcgw lab proof v1"


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


if __name__ == "__main__":
    GatewayServerApp.launch_instance()
