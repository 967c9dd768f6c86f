"""Headers every page and problem the gateway itself serves carries (never a lab's relayed
responses: JupyterLab sets its own policy): a strict Content-Security-Policy, no MIME sniffing,
no Referer to other origins. In a module of its own so that the API and the proxy both use it
without one importing the other."""

from __future__ import annotations

SECURITY_HEADERS = {
    # The portal's own scripts (no inline script), its calls to the API and the event stream,
    # and the frame of a job's rendered notebook (itself sandboxed, gateway.api.rendered).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "style-src 'self'; img-src 'self'; frame-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
