"""Webhook secrets and signatures.

Each user has one webhook secret, derived from the config's ``cookie_secret`` and the user's id
(HMAC-SHA256 with a purpose label, as :func:`gateway.tokens.lab_token` derives lab tokens): it
is never stored, so a copy of the database forges no delivery; changing ``cookie_secret``
changes every user's secret. Users read theirs from ``GET /api/v1/webhook-secret``
(``hpcgw webhook-secret``).

Every delivery carries ``Hpcgw-Signature: t=<unix time>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256, keyed with the secret's text as UTF-8, of ``"<t>.<raw body>"``. A receiver
recomputes it over the body bytes it received, compares in constant time and refuses a ``t``
too far from its own clock (a replayed delivery). :func:`verify` does exactly that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_HEADER = "Hpcgw-Signature"
SECRET_PREFIX = "hpcgw_whsec_"  # noqa: S105 - a recognisable prefix, not a secret
# Seconds a signature's time may differ from the receiver's clock (either way).
DEFAULT_TOLERANCE = 300.0
_SECRET_LABEL = b"hpcgw webhook secret v1\0"


def webhook_secret(cookie_secret: str, user_id: int) -> str:
    """The webhook secret of gateway user ``user_id``: :data:`SECRET_PREFIX` and 43 URL-safe
    characters (256 bits). The same for the same config and user, different for every user."""
    digest = hmac.new(cookie_secret.encode(), _SECRET_LABEL + str(user_id).encode(),
                      hashlib.sha256).digest()
    return SECRET_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1`` value: hex HMAC-SHA256 of ``"<timestamp>.<body>"`` keyed with ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The :data:`SIGNATURE_HEADER` value of a delivery of ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float,
           tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` at a time within ``tolerance``
    seconds of ``now``. A header that does not parse, has no ``t`` or no ``v1``, or a ``t``
    out of range, is False, never an exception. Several ``v1`` values are allowed (one
    matching is enough), unknown keys are ignored, as receivers of such schemes expect."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if (timestamp is not None or not value.isascii() or not value.isdigit()
                    or len(value) > 15):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected.encode(), candidate.encode())
               for candidate in candidates if candidate.isascii())
