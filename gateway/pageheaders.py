"""Headers every page and problem the gateway itself serves carries (never a lab's relayed
responses: JupyterLab sets its own policy): a strict Content-Security-Policy, no MIME sniffing,
no Referer to other origins. In a module of its own so that the API and the proxy both use it
without one importing the other."""

from __future__ import annotations

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
