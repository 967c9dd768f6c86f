"""The dev cluster's OpenID Connect provider, for single sign-on: used by scripts/dev-cluster.

panva's oidc-provider (npm, pinned in scripts/oidc-provider/package-lock.json) behind the small
server in scripts/oidc-provider/server.mjs, on 127.0.0.1 (a port of its own choosing; the
issuer is http://127.0.0.1:PORT). Accounts alice and bob with random passwords; one client,
``hpcgw-dev``, registered as a native application with the loopback redirect URI
``http://127.0.0.1/login/oidc/callback``: for such a client the provider accepts the URI on
any port (RFC 8252 §7.3), so every test gateway on its own port can use it. Everything a
gateway config or a test needs is in $HPCGW_DEV_DIR/oidc.json (0600). Stdlib only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEV_DIR = Path(os.environ.get("HPCGW_DEV_DIR", "/var/lib/hpcgw-dev"))
PROVIDER = Path(__file__).resolve().parent / "oidc-provider"
DIR = DEV_DIR / "oidc"  # root-only: the provider's config (passwords, client secret, keys)
CONFIG = DIR / "config.json"
STATE = DEV_DIR / "run" / "oidc.json"  # written by the provider once it listens
LOG = DEV_DIR / "log" / "oidc-provider.log"
INFO = DEV_DIR / "oidc.json"
CLIENT_ID = "hpcgw-dev"
REDIRECT = "http://127.0.0.1/login/oidc/callback"
# alice and bob are the cluster's users; carol has no gateway account in the tests' gateways
# (single sign-on refuses her, or creates her where the config says so). slurm is a stranger
# who took a system account's name at the provider: never created, whatever the config says.
ACCOUNTS = {"alice": "Alice Liddell", "bob": "Bob Builder", "carol": "Carol Danvers",
            "slurm": "Not The Scheduler"}
NODE_MAJOR = 18  # oidc-provider 8.x runs on Node 18 (Debian 12's) and later


def say(message: str) -> None:
    print(f"dev-cluster: {message}", file=sys.stderr, flush=True)


def ensure_node() -> None:
    """Node.js and npm: Debian's packages when either is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        say("installing nodejs and npm (for the OpenID Connect provider)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs",
                        "npm"], check=True, env=env, stdout=subprocess.DEVNULL)
    version = subprocess.run(["node", "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < NODE_MAJOR:
        raise SystemExit(f"dev-cluster: node {version} is too old for oidc-provider")


def ensure_modules() -> None:
    """``npm ci`` the provider's locked dependencies when they are missing or stale."""
    stamp = PROVIDER / "node_modules" / ".hpcgw-installed"
    lock = PROVIDER / "package-lock.json"
    if stamp.exists() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return
    say("installing the OpenID Connect provider's npm packages (npm ci)")
    subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=PROVIDER,
                   check=True, stdout=subprocess.DEVNULL)
    stamp.touch()


def ensure_config() -> tuple[dict[str, Any], bool]:
    """The provider's config, made once (random passwords and client secret) and kept after;
    an account of :data:`ACCOUNTS` it lacks is added. Whether it changed."""
    DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    config: dict[str, Any] = json.loads(CONFIG.read_text()) if CONFIG.exists() else {
        "clients": [{"client_id": CLIENT_ID, "client_secret": secrets.token_urlsafe(32),
                     "application_type": "native", "redirect_uris": [REDIRECT],
                     "token_endpoint_auth_method": "client_secret_basic"}],
        "accounts": {},
        "cookie_keys": [secrets.token_urlsafe(32)],
    }
    missing = {name: full for name, full in ACCOUNTS.items() if name not in config["accounts"]}
    for name, full in missing.items():
        config["accounts"][name] = {"password": secrets.token_urlsafe(12), "claims": {
            "preferred_username": name, "email": f"{name}@example.org", "name": full}}
    if missing:
        CONFIG.touch(mode=0o600)
        CONFIG.write_text(json.dumps(config, indent=2))
    return config, bool(missing)


def running_issuer() -> str | None:
    """The issuer of the provider this script started, if it still runs."""
    try:
        state = json.loads(STATE.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return str(state["issuer"])


def start() -> str:
    """The provider, started unless it runs; its issuer."""
    ensure_node()
    ensure_modules()
    config, changed = ensure_config()
    issuer = running_issuer()
    if issuer is not None and changed:
        say("restarting the OpenID Connect provider: its accounts changed")
        running = pid()
        if running:
            os.kill(running, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while running_issuer() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        issuer = None
    if issuer is None:
        STATE.unlink(missing_ok=True)
        with LOG.open("a") as log:
            subprocess.Popen(["node", "server.mjs", "--config", str(CONFIG), "--state",
                              str(STATE)], cwd=PROVIDER, stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while (issuer := running_issuer()) is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"dev-cluster: the OpenID Connect provider did not start; "
                                 f"see {LOG}")
            time.sleep(0.1)
    write_info(issuer, config)
    return issuer


def write_info(issuer: str, config: dict[str, Any]) -> None:
    client = config["clients"][0]
    info = {"issuer": issuer, "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "passwords": {name: account["password"]
                          for name, account in config["accounts"].items()}}
    INFO.touch(mode=0o600)
    INFO.write_text(json.dumps(info, indent=2))


def pid() -> int | None:
    try:
        return int(json.loads(STATE.read_text())["pid"]) if running_issuer() else None
    except (OSError, ValueError, KeyError):
        return None
