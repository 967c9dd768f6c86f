"""A minimal Jupyter kernel client over a lab's REST API and kernel WebSocket (through the
gateway's proxy), enough to run a cell and read what it printed."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp

# Jupyter's v5 protocol over the default (JSON text) WebSocket framing.
SESSION = uuid.uuid4().hex


def execute_request(code: str) -> dict[str, Any]:
    msg_id = uuid.uuid4().hex
    return {
        "header": {"msg_id": msg_id, "username": "test", "session": SESSION,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }


async def start_kernel(session: aiohttp.ClientSession, lab: str, headers: dict[str, str]
                       ) -> str:
    async with session.post(f"{lab}api/kernels", json={"name": "python3"},
                            headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def run_cell(ws: aiohttp.ClientWebSocketResponse, code: str, timeout: float = 60.0
                   ) -> str:
    """Execute ``code`` on the kernel behind ``ws``; everything it printed to stdout."""
    request = execute_request(code)
    await ws.send_str(json.dumps(request))
    printed: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.receive()
            assert message.type is aiohttp.WSMsgType.TEXT, message
            data = json.loads(message.data)
            if data.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                continue
            kind = data["header"]["msg_type"]
            if kind == "stream" and data["content"]["name"] == "stdout":
                printed.append(data["content"]["text"])
            elif kind == "error":
                raise AssertionError(f"cell failed: {data['content']['evalue']}")
            elif kind == "status" and data["content"]["execution_state"] == "idle":
                return "".join(printed)
