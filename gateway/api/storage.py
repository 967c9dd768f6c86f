"""Storage routes: the caller's registered storage servers (data staging credentials).

``POST /api/v1/storage`` registers one (JSON: ``name``, ``host``, ``port`` (22), ``user``, and
optionally ``host_key`` and ``private_key``); without a host key the gateway answers 409 with
the key the server offers, to confirm. The answer's ``public_key`` goes into the storage
account's ``authorized_keys``. Private keys are never returned. Another user's storage server
is a 404, as a missing one. A user has at most 50 (``MAX_STORAGE_SERVERS``; 429 past it).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import HOST, IDENTIFIER, UNIX_USER, schema_pattern
from ..errors import FieldError, ValidationFailed
from ..plainwords import plain_errors
from .jobs import read_json_body
from .keys import STORAGE, current_user
from .models import Storage, StorageList, json_answer

routes = web.RouteTableDef()
ONE = "/api/v1/storage/{name}"


class StorageRequest(BaseModel):
    """A storage server to register (the patterns are those the registry checks again)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=schema_pattern(IDENTIFIER))
    host: str = Field(pattern=schema_pattern(HOST), description="a host name or address")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(pattern=schema_pattern(UNIX_USER), description="the unix account")
    host_key: str | None = Field(None, description="the server's host key as an OpenSSH public "
                                 "key line; absent: the gateway answers 409 with the key the "
                                 "server offers, to confirm")
    private_key: str | None = Field(None, description="an OpenSSH private key to use; absent: "
                                    "the gateway makes one")


def _parse(raw: Any) -> StorageRequest:
    try:
        return StorageRequest.model_validate(raw)
    except ValidationError as exc:
        raise ValidationFailed([FieldError(field, message)
                                for field, message in plain_errors(exc, "body")]) from None


@routes.post("/api/v1/storage")
async def add_storage(request: web.Request) -> web.Response:
    asked = _parse(await read_json_body(request, "a storage request"))
    view = await request.app[STORAGE].add(
        current_user(request), asked.name, asked.host, asked.port, asked.user, asked.host_key,
        asked.private_key.encode() if asked.private_key is not None else None)
    return json_answer(Storage.model_validate(view), 201,
                       {"Location": f"/api/v1/storage/{asked.name}"})


@routes.get("/api/v1/storage")
async def list_storage(request: web.Request) -> web.Response:
    return json_answer(StorageList.model_validate(
        {"storage": request.app[STORAGE].list(current_user(request))}))


@routes.get(ONE)
async def show_storage(request: web.Request) -> web.Response:
    return json_answer(Storage.model_validate(
        request.app[STORAGE].get(current_user(request), request.match_info["name"])))


@routes.delete(ONE)
async def remove_storage(request: web.Request) -> web.Response:
    request.app[STORAGE].remove(current_user(request), request.match_info["name"])
    return web.Response(status=204)
