"""Typed application and request keys (aiohttp's AppKey: no module-level singletons).

The API reaches jobs only through the job service and users only through :class:`Accounts`;
the store itself is the composition root's (:mod:`gateway.server`), never a handler's.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..accounts import Accounts
from ..config import Config
from ..jobs.service import JobService
from ..metrics import GatewayMetrics
from ..proxy.labs import LabProxy
from ..sso.client import OIDCClient
from ..staging.credentials import StorageCredentials
from ..users import User

CONFIG = web.AppKey("config", Config)
ACCOUNTS = web.AppKey("accounts", Accounts)
SERVICE = web.AppKey("service", JobService)
STORAGE = web.AppKey("storage", StorageCredentials)
PROXY = web.AppKey("proxy", LabProxy)
METRICS = web.AppKey("metrics", GatewayMetrics)
OIDC = web.AppKey("oidc", OIDCClient)  # only where [oidc] is configured
OPENAPI = web.AppKey[dict[str, Any]]("openapi")  # the document this gateway serves
USER_KEY = web.RequestKey("user", User)  # request-scoped: the authenticated gateway user
VIA_COOKIE = web.RequestKey("via_cookie", bool)  # authenticated by a browser session cookie


def current_user(request: web.Request) -> User:
    """The authenticated user (the auth middleware guarantees one on protected routes)."""
    return request[USER_KEY]
