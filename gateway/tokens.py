"""Lab tokens and the proof a lab's server gives that it holds one.

A lab's token is never stored: it is derived from the config's ``cookie_secret`` and the job id
(HMAC-SHA256 with a purpose label), so the database, or a copy of it, opens no lab. The gateway
derives it when it stages the job's 0600 ``lab.token`` file and whenever the proxy injects it.
Changing ``cookie_secret`` therefore also locks the gateway out of labs that are running.

Before the gateway sends the token, or anything of a user's, over a new connection to a lab,
the server at the other end proves it holds the token without the gateway revealing it: the
gateway sends a fresh nonce to ``PROOF_PATH`` under the lab's prefix, and the server
(``gateway/jobside/lab.py``) answers with the address it accepted the connection on and
``HMAC(token, nonce | address)``. The address binds the answer to the server's own socket: a
listener that relays the challenge to the real lab gets an answer for the lab's address, not
for its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

PROOF_PATH = "hpcgw/proof"
_LAB_TOKEN_LABEL = b"hpcgw lab token v1\0"
_PROOF_LABEL = "hpcgw lab proof v1"


def lab_token(secret: str, job_id: str) -> str:
    """The token of lab ``job_id`` (43 URL-safe characters)."""
    digest = hmac.new(secret.encode(), _LAB_TOKEN_LABEL + job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def lab_proof(token: str, nonce: str, address: str) -> str:
    """What a server holding ``token`` answers to ``nonce`` on a connection it accepted at
    ``address`` (``"ip:port"`` as its own socket names it); hex. The job side computes the
    same (``gateway/jobside/lab.py`` cannot import the gateway, so it has its own copy)."""
    message = f"{_PROOF_LABEL}|{nonce}|{address}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()
