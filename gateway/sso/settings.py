"""The ``[oidc]`` section: which OpenID Connect provider the portal's single sign-on uses."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CLAIM = re.compile(r"^[A-Za-z0-9_:.-]{1,64}\Z")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _checked_url(value: str, what: str) -> str:
    """An absolute https URL (http only on loopback, for a provider on this machine), no
    query, fragment or user info."""
    parts = urlsplit(value)
    loopback = (parts.hostname or "") in _LOOPBACK_HOSTS or (
        parts.hostname or "").startswith("127.")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"the {what} must be an https URL (http only on loopback)")
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise ValueError(f"the {what} must be a plain URL: a host, no query, fragment or "
                         "user info")
    return value


class OIDCConfig(BaseModel):
    """A provider the portal's "log in with single sign-on" sends browsers to.

    The gateway user is the one named by the ID token's ``username_claim``. A user the gateway
    does not know is refused, unless ``create_users``: then it is created on first login,
    running jobs as the unix user in ``unix_user_claim`` (or, without one, the same name), if
    that account is a person's on every cluster: its uid in ``min_uid``..``max_uid`` (as
    login.defs' UID_MIN and UID_MAX; ``slurm``, ``daemon`` and ``nobody`` are outside), and not
    the account the gateway itself runs as.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str = Field(min_length=1, max_length=1024)
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"
    create_users: bool = False
    unix_user_claim: str | None = None
    min_uid: int = Field(1000, ge=1)
    max_uid: int = Field(59999, ge=1)
    # Where the provider sends the browser back; default: this gateway's own origin (as the
    # browser reached it) + /login/oidc/callback. Set it behind a reverse proxy.
    redirect_url: str | None = None
    label: str = Field("Log in with single sign-on", min_length=1, max_length=80)
    timeout: float = Field(10.0, gt=0, le=120)  # seconds per call to the provider

    @model_validator(mode="after")
    def _uid_range(self) -> OIDCConfig:
        if self.min_uid > self.max_uid:
            raise ValueError("min_uid must not be above max_uid")
        return self

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        return _checked_url(value.rstrip("/"), "issuer")

    @field_validator("redirect_url")
    @classmethod
    def _redirect(cls, value: str | None) -> str | None:
        return None if value is None else _checked_url(value, "redirect_url")

    @field_validator("scopes")
    @classmethod
    def _has_openid(cls, value: list[str]) -> list[str]:
        if "openid" not in value or not all(CLAIM.match(scope) for scope in value):
            raise ValueError("scopes must include openid, each a plain word")
        return value

    @field_validator("username_claim", "unix_user_claim")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        if value is not None and not CLAIM.match(value):
            raise ValueError("a claim name: letters, digits, _ : . -")
        return value
