"""``GET /api/v1/webhook-secret``: the caller's webhook secret, the key of the signatures on
their jobs' webhook deliveries (:mod:`gateway.webhooks.signing`).

The secret is derived from the config's ``cookie_secret`` and the caller's user id, so it is
the same on every call and after a restart, never stored, and another user's secret verifies
none of the caller's deliveries. The answer is ``Cache-Control: no-store``.
"""

from __future__ import annotations

from aiohttp import web

from ..webhooks.signing import webhook_secret
from .keys import CONFIG, current_user
from .models import WebhookSecret, json_answer

routes = web.RouteTableDef()


@routes.get("/api/v1/webhook-secret")
async def get_webhook_secret(request: web.Request) -> web.Response:
    secret = webhook_secret(request.app[CONFIG].gateway.cookie_secret, current_user(request).id)
    return json_answer(WebhookSecret(secret=secret), headers={"Cache-Control": "no-store"})
