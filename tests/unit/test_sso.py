"""Single sign-on's pieces that need no provider: the login attempt's cookie, the settings.
The whole flow runs against a real provider in tests/integration/test_sso.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.api.sso import ATTEMPT_LIFETIME_S, open_attempt, seal_attempt
from gateway.sso.client import LoginAttempt
from gateway.sso.settings import OIDCConfig

SECRET = "k" * 40
ATTEMPT = LoginAttempt("state-1", "nonce-1", "verifier-1", "http://127.0.0.1:1/cb")


def test_an_attempt_comes_back_as_it_was_sealed() -> None:
    sealed = seal_attempt(SECRET, ATTEMPT, "/jobs/0123456789abcdef", now=1000.0)
    assert open_attempt(SECRET, sealed, now=1000.0 + ATTEMPT_LIFETIME_S - 1) == (
        ATTEMPT, "/jobs/0123456789abcdef")


@pytest.mark.parametrize("change", ["secret", "payload", "expired", "garbage"])
def test_a_changed_forged_or_old_attempt_is_refused(change: str) -> None:
    sealed = seal_attempt(SECRET, ATTEMPT, "/", now=1000.0)
    encoded, signature = sealed.split(".")
    now = 1000.0
    if change == "secret":
        assert open_attempt("x" * 40, sealed, now=now) is None
    elif change == "payload":
        other = seal_attempt(SECRET, LoginAttempt("mine", "n", "v", "u"), "/", now=now)
        assert open_attempt(SECRET, other.split(".")[0] + "." + signature, now=now) is None
    elif change == "expired":
        assert open_attempt(SECRET, sealed, now=now + ATTEMPT_LIFETIME_S + 1) is None
    else:
        for value in ("", ".", "abc", "@@@.@@@", encoded):
            assert open_attempt(SECRET, value, now=now) is None


def test_the_next_path_is_kept_same_origin() -> None:
    sealed = seal_attempt(SECRET, ATTEMPT, "//evil.example/x", now=1000.0)
    assert open_attempt(SECRET, sealed, now=1000.0) == (ATTEMPT, "/")


def settings(**changes: object) -> OIDCConfig:
    return OIDCConfig.model_validate({"issuer": "https://sso.example.org/realms/hpc",
                                      "client_id": "hpcgw", "client_secret": "s", **changes})


def test_settings_defaults_and_issuer_normalised() -> None:
    chosen = settings(issuer="https://sso.example.org/realms/hpc/")
    assert chosen.issuer == "https://sso.example.org/realms/hpc"
    assert chosen.username_claim == "preferred_username" and not chosen.create_users
    assert settings(issuer="http://127.0.0.1:8080").issuer == "http://127.0.0.1:8080"


@pytest.mark.parametrize("changes", [
    {"issuer": "http://sso.example.org"},  # plain http off loopback
    {"issuer": "https://user@sso.example.org"},
    {"issuer": "https://sso.example.org/?x=1"},
    {"issuer": "ftp://sso.example.org"},
    {"scopes": ["profile"]},  # no openid
    {"username_claim": "a b"},
    {"client_secret": ""},
    {"redirect_url": "http://gateway.example.org/login/oidc/callback"},
    {"unknown": 1},
    {"min_uid": 2000, "max_uid": 1999},  # no uid left for create_users
    {"min_uid": 0},  # root's
])
def test_bad_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        settings(**changes)
