"""scripts/lab-cell takes the gateway token from HPCGW_TOKEN or stdin, never from argv."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lab-cell"


async def run_lab_cell(*args: str, env_token: str | None, stdin: bytes) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "HPCGW_TOKEN"}
    if env_token is not None:
        env["HPCGW_TOKEN"] = env_token
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_the_token_comes_from_the_environment_or_stdin() -> None:
    seen: list[str] = []

    async def kernels(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(status=500, text="no kernels here")

    app = web.Application()
    app.router.add_post("/labs/{lab}/api/kernels", kernels)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        code, _ = await run_lab_cell(url, "0123456789abcdef", "print(1)",
                                     env_token="hpcgw_from_env", stdin=b"hpcgw_from_stdin\n")
        assert code != 0 and seen == ["Bearer hpcgw_from_env"]
        code, _ = await run_lab_cell(url, "0123456789abcdef", "print(1)", env_token=None,
                                     stdin=b"hpcgw_from_stdin\n")
        assert code != 0 and seen[-1] == "Bearer hpcgw_from_stdin"
    assert len(seen) == 2


async def test_no_token_or_a_token_on_argv_is_refused() -> None:
    code, err = await run_lab_cell("http://127.0.0.1:1", "0123456789abcdef", "print(1)",
                                   env_token=None, stdin=b"")
    assert code != 0 and "HPCGW_TOKEN" in err
    # The old form (URL TOKEN LAB_ID CODE) is a usage error, not a token.
    code, err = await run_lab_cell("http://127.0.0.1:1", "hpcgw_secret", "0123456789abcdef",
                                   "print(1)", env_token="x", stdin=b"")
    assert code != 0 and "lab-cell URL LAB_ID CODE" in err
