"""The relying party's side of OpenID Connect's authorization code flow with PKCE.

authlib makes the PKCE pair and checks the ID token's claims (issuer, audience, expiry, nonce,
``at_hash``); joserfc (authlib's JOSE library) checks its signature against the provider's
published keys. The HTTP calls (discovery, keys, the token and userinfo endpoints) are aiohttp
with a timeout each, answers capped at :data:`MAX_ANSWER` bytes and parsed as untrusted JSON.

A login is two browser requests: :meth:`OIDCClient.start` gives the provider's URL and the
:class:`LoginAttempt` to keep until the browser comes back (the gateway keeps it in a signed,
short-lived cookie); :meth:`OIDCClient.finish` turns the code the provider sent back into the
ID token's verified claims, or raises :class:`SSOError` saying why not in words.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import JoseError as JoseRFCError
from joserfc.jwk import KeySet

from ..bodies import read_at_most
from .settings import OIDCConfig

MAX_ANSWER = 256 * 1024
METADATA_TTL = 3600.0  # seconds discovery and keys are reused before they are fetched again
LEEWAY = 60  # seconds of clock skew allowed on the ID token's times
# Signature algorithms accepted on ID tokens: asymmetric only (never "none" nor HMAC with the
# client secret, which a provider's key confusion could turn against us).
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")


class SSOError(Exception):
    """A login that cannot go on; ``str()`` says why, in words a user can read. ``status``:
    502 when the provider failed (the default here), 400 for a broken or forged answer."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LoginAttempt:
    """What a login keeps between sending the browser away and its return."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str


class OIDCClient:
    """One provider's client; ``session`` is the gateway's HTTP session for it."""

    def __init__(self, settings: OIDCConfig, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self._session = session
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: tuple[float, KeySet] | None = None

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        return await self._call("GET", url, **kwargs)

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON answer of a 200; SSOError for anything else (unreachable, slow, not JSON,
        too large, another status)."""
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with self._session.request(method, url, timeout=timeout,
                                             allow_redirects=False, **kwargs) as answer:
                body = await read_at_most(answer.content, MAX_ANSWER)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SSOError(f"the sign-on provider did not answer ({type(exc).__name__})") from exc
        if len(body) > MAX_ANSWER:
            raise SSOError("the sign-on provider's answer is too large")
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if status != 200 or not isinstance(parsed, dict):
            detail = parsed.get("error") if isinstance(parsed, dict) else None
            raise SSOError(f"the sign-on provider refused ({status}"
                           + (f", {str(detail)[:80]}" if detail else "") + ")")
        return parsed

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached for :data:`METADATA_TTL` s); its
        ``issuer`` must be the configured one."""
        if self._metadata and time.monotonic() - self._metadata[0] < METADATA_TTL:
            return self._metadata[1]
        issuer = self.settings.issuer
        found = await self._get_json(issuer + "/.well-known/openid-configuration")
        needed = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")
        if found.get("issuer") != issuer or not all(isinstance(found.get(k), str)
                                                    for k in needed):
            raise SSOError("the sign-on provider's discovery document does not match its "
                           "configured issuer")
        self._metadata = (time.monotonic(), found)
        return found

    async def _key_set(self, refresh: bool = False) -> KeySet:
        if self._keys and not refresh and time.monotonic() - self._keys[0] < METADATA_TTL:
            return self._keys[1]
        published = await self._get_json((await self.metadata())["jwks_uri"])
        try:
            keys = KeySet.import_key_set(published)  # type: ignore[arg-type] # checked by it
        except (JoseRFCError, ValueError, TypeError, KeyError) as exc:
            raise SSOError("the sign-on provider's keys could not be read") from exc
        self._keys = (time.monotonic(), keys)
        return keys

    async def start(self, redirect_uri: str) -> tuple[str, LoginAttempt]:
        """The provider's authorization URL for a new login, and the attempt to keep."""
        endpoint = (await self.metadata())["authorization_endpoint"]
        attempt = LoginAttempt(generate_token(32), generate_token(32), generate_token(64),
                               redirect_uri)
        query = urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
            "state": attempt.state, "nonce": attempt.nonce,
            "code_challenge": create_s256_code_challenge(attempt.verifier),
            "code_challenge_method": "S256"})
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", attempt

    async def finish(self, code: str, attempt: LoginAttempt) -> dict[str, Any]:
        """Exchange ``code`` (with the attempt's PKCE verifier) and verify the ID token; its
        claims, with userinfo's added when the token lacks the username claim."""
        metadata = await self.metadata()
        tokens = await self._call(
            "POST", metadata["token_endpoint"],
            auth=aiohttp.BasicAuth(self.settings.client_id, self.settings.client_secret),
            data={"grant_type": "authorization_code", "code": code,
                  "redirect_uri": attempt.redirect_uri, "code_verifier": attempt.verifier})
        id_token, access_token = tokens.get("id_token"), tokens.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise SSOError("the sign-on provider sent no ID token")
        claims = await self._verified(id_token, access_token, attempt.nonce)
        if self.settings.username_claim not in claims and metadata.get("userinfo_endpoint"):
            more = await self._get_json(metadata["userinfo_endpoint"],
                                        headers={"Authorization": f"Bearer {access_token}"})
            if more.get("sub") == claims["sub"]:
                claims = {**more, **claims}
        return claims

    async def _verified(self, id_token: str, access_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once its signature and claims check out."""
        try:
            try:
                decoded = jwt.decode(id_token, await self._key_set(), algorithms=ALGORITHMS)
            except JoseRFCError:  # a key rotated since we fetched them: fetch once more
                decoded = jwt.decode(id_token, await self._key_set(refresh=True),
                                     algorithms=ALGORITHMS)
            claims = CodeIDToken(
                decoded.claims, decoded.header,
                {"iss": {"essential": True, "value": self.settings.issuer}},
                {"nonce": nonce, "client_id": self.settings.client_id,
                 "access_token": access_token})
            claims.validate(now=int(time.time()), leeway=LEEWAY)
        except (JoseRFCError, ValueError) as exc:
            raise SSOError(f"the sign-on provider's ID token did not verify: {exc}"[:200]
                           ) from exc
        return dict(claims)
