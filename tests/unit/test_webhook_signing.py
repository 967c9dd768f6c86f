"""Webhook secrets (derived per user, never stored) and the Hpcgw-Signature header: its format,
and verification that refuses another body, another secret, a stale time and any malformed
header without raising."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from gateway.webhooks.signing import (
    SECRET_PREFIX,
    signature_header,
    verify,
    webhook_secret,
)

COOKIE = "c" * 40
NOW = 1_760_000_000
BODY = b'{"event_id":7,"job_id":"00112233aabbccdd","state":"running"}'


def test_each_user_has_a_stable_secret_of_their_own() -> None:
    alice = webhook_secret(COOKIE, 1)
    assert alice == webhook_secret(COOKIE, 1)  # derived: the same after a restart
    assert re.fullmatch(re.escape(SECRET_PREFIX) + r"[A-Za-z0-9_-]{43}", alice)
    assert alice != webhook_secret(COOKIE, 2)
    assert alice != webhook_secret("d" * 40, 1)  # another gateway's secret: another key
    assert COOKIE not in alice


def test_the_header_is_t_and_v1_the_hex_hmac_of_t_dot_body() -> None:
    secret = webhook_secret(COOKIE, 1)
    header = signature_header(secret, NOW, BODY)
    expected = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"
    assert secret not in header


def test_verify_accepts_the_signed_body_only() -> None:
    secret = webhook_secret(COOKIE, 1)
    header = signature_header(secret, NOW, BODY)
    assert verify(secret, header, BODY, now=NOW)
    assert verify(secret, header, BODY, now=NOW + 299)
    assert not verify(secret, header, BODY + b" ", now=NOW)
    assert not verify(webhook_secret(COOKIE, 2), header, BODY, now=NOW)  # bob's secret
    assert not verify(secret, header, BODY, now=NOW + 301)  # a replay, later
    assert not verify(secret, header, BODY, now=NOW - 301)  # or a time from the future
    assert verify(secret, header, BODY, now=NOW + 1000, tolerance=2000)


def test_verify_takes_any_matching_v1_and_ignores_unknown_keys() -> None:
    secret = webhook_secret(COOKIE, 1)
    good = signature_header(secret, NOW, BODY).split(",")[1]
    assert verify(secret, f"t={NOW},v1={'0' * 64},{good},v2=xyz", BODY, now=NOW)
    assert verify(secret, f"t={NOW}, {good}", BODY, now=NOW)


@pytest.mark.parametrize("header", [
    "", "garbage", "t=,v1=", f"v1={'0' * 64}", f"t={NOW}", f"t=abc,v1={'0' * 64}",
    f"t={NOW},t={NOW},v1={'0' * 64}", f"t={'9' * 400},v1={'0' * 64}", f"t=-{NOW},v1=00",
    f"t={NOW},v1=é", "t=١٢٣,v1=00", f"t={NOW};v1=00",
])
def test_a_malformed_header_is_false_never_an_exception(header: str) -> None:
    assert verify(webhook_secret(COOKIE, 1), header, BODY, now=NOW) is False
