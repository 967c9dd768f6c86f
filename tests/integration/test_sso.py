"""Single sign-on through a real OpenID Connect provider (oidc-provider from npm, started by
scripts/dev-cluster; its accounts and client are in $HPCGW_DEV_DIR/oidc.json), in a real
browser (Debian's headless chromium driven by Playwright): log in, use the API with the
session, log out (the session is revoked, not only forgotten by the browser), a disabled user
refused, a forged callback refused. Screenshots under $HPCGW_ARTIFACTS/sso/."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.config import load_config
from gateway.store import Store

from .conftest import HPCGW, Gateway, dev_oidc, oidc_section, own_gateway

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def provider(dev_config: Path) -> dict[str, Any]:
    return dev_oidc()


@pytest.fixture(scope="module")
def sso_gateway(dev_config: Path, provider: dict[str, Any],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-sso"),
                     oidc_section(provider)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def shot(page: Page, name: str) -> None:
    folder = Path(os.environ.get("HPCGW_ARTIFACTS", "artifacts")) / "sso"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def sign_in(page: Page, gateway: Gateway, user: str, password: str) -> None:
    """From the gateway's login page, through the provider's form, with these credentials."""
    page.goto(f"{gateway.url}/")
    expect(page).to_have_url(f"{gateway.url}/login?next=/", timeout=30_000)
    page.click("#sso")
    expect(page.locator("input[name=login]")).to_be_visible(timeout=30_000)
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_log_in_use_the_api_and_log_out(sso_gateway: Gateway, provider: dict[str, Any],
                                        browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, sso_gateway, "alice", "not her password")
    expect(page.get_by_role("alert")).to_contain_text("Invalid username or password")
    shot(page, "provider-wrong-password")
    page.fill("input[name=password]", provider["passwords"]["alice"])
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{sso_gateway.url}/", timeout=30_000)
    expect(page.locator("body")).to_contain_text("alice")
    shot(page, "portal-after-sso")
    assert context.request.get(f"{sso_gateway.url}/api/v1/jobs").status == 200  # its cookies
    session = next(c["value"] for c in context.cookies() if c["name"] == "hpcgw_session")

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(re.escape(sso_gateway.url + "/login")), timeout=30_000)
    # The revoked session stays revoked even for a client that kept the cookie.
    status = _status_with_cookie(sso_gateway, session)
    assert status == 401, status
    context.close()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """(status, body, Set-Cookie) of a GET that follows no redirect (urllib: Playwright's
    event loop owns this thread)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http only
    try:
        with opener.open(request, timeout=30) as answer:
            return int(answer.status), answer.read().decode(), answer.headers["Set-Cookie"] or ""
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode(), refused.headers["Set-Cookie"] or ""


def _status_with_cookie(gateway: Gateway, session: str) -> int:
    """The API's status for a client that sends this session cookie."""
    return _get(f"{gateway.url}/api/v1/jobs", {"Cookie": f"hpcgw_session={session}"})[0]


def test_a_disabled_user_gets_no_session(sso_gateway: Gateway, provider: dict[str, Any],
                                         browser: Browser) -> None:
    config = str(sso_gateway.config)
    subprocess.run([*HPCGW, "--config", config, "user", "set", "bob", "--disable"],
                   check=True, capture_output=True, timeout=60)
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, sso_gateway, "bob", provider["passwords"]["bob"])
        expect(page.get_by_role("alert")).to_contain_text("disabled", timeout=30_000)
        shot(page, "disabled-user-refused")
        assert not any(c["name"] == "hpcgw_session" for c in context.cookies())
    finally:
        context.close()
        subprocess.run([*HPCGW, "--config", config, "user", "set", "bob", "--enable"],
                       check=True, capture_output=True, timeout=60)


def test_a_forged_callback_is_refused(sso_gateway: Gateway) -> None:
    """Another site sending the browser to the callback with its own code gets no session."""
    status, body, cookies = _get(f"{sso_gateway.url}/login/oidc/callback?code=stolen&state=x")
    assert status == 400
    assert "not started here" in body
    assert "hpcgw_session" not in cookies


def test_an_unknown_user_is_refused_or_created_as_configured(
        sso_gateway: Gateway, provider: dict[str, Any], browser: Browser, dev_config: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """carol is the provider's but not the gateway's: refused, unless create_users. slurm is
    never created: the unix account of that name is a system one (uid outside 1000..59999)."""
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, sso_gateway, "carol", provider["passwords"]["carol"])
    expect(page.get_by_role("alert")).to_contain_text("carol has no account", timeout=30_000)
    context.close()
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-sso-create"),
                     oidc_section(provider, "create_users = true\n")) as creating:
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, creating, "carol", provider["passwords"]["carol"])
        expect(page).to_have_url(f"{creating.url}/", timeout=30_000)
        assert context.request.get(f"{creating.url}/api/v1/jobs").status == 200
        context.close()
        # A stranger who took a system account's name at the provider: no user for slurm.
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, creating, "slurm", provider["passwords"]["slurm"])
        expect(page.get_by_role("alert")).to_contain_text("slurm cannot be created",
                                                          timeout=30_000)
        assert not any(c["name"] == "hpcgw_session" for c in context.cookies())
        context.close()
        listed = subprocess.run([*HPCGW, "--config", str(creating.config), "user", "list"],
                                capture_output=True, text=True, check=True, timeout=60).stdout
        assert any(line.split()[:4] == ["carol", "carol", "no", "enabled"]
                   for line in listed.splitlines()), listed
        assert not any(line.split()[:1] == ["slurm"] for line in listed.splitlines()), listed


def test_a_user_bound_to_another_sign_on_identity_is_refused(
        sso_gateway: Gateway, provider: dict[str, Any], browser: Browser) -> None:
    """The name claim is not an identity: once a user is bound to the provider's (issuer,
    sub), a login naming that user with another sub gets no session."""
    store = Store(load_config(sso_gateway.config).gateway.data_dir / "hpcgw.db")
    try:
        bob = store.users.get_user("bob")
        assert store.users.bind_subject(bob, f"{provider['issuer']} someone-else")
    finally:
        store.close()
    context = browser.new_context()
    page = context.new_page()
    try:
        sign_in(page, sso_gateway, "bob", provider["passwords"]["bob"])
        expect(page.get_by_role("alert")).to_contain_text("another sign-on identity",
                                                          timeout=30_000)
        assert not any(c["name"] == "hpcgw_session" for c in context.cookies())
    finally:
        context.close()


def test_an_admins_identity_is_bound_by_the_operator_not_by_a_first_sign_on(
        dev_config: Path, provider: dict[str, Any], browser: Browser,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Whoever holds an admin's name at the provider (a reused or self-chosen username) must
    not become the gateway's admin by signing on first: the login page names the identity,
    and only once the operator binds it with ``hpcgw user set`` does it log in."""
    with own_gateway(dev_config, tmp_path_factory.mktemp("gateway-sso-admin"),
                     oidc_section(provider)) as gateway:
        subprocess.run([*HPCGW, "--config", str(gateway.config), "user", "set", "alice",
                        "--admin"], capture_output=True, check=True, timeout=60)
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, gateway, "alice", provider["passwords"]["alice"])
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("alice is an administrator", timeout=30_000)
        shot(page, "admin-not-bound")
        assert not any(c["name"] == "hpcgw_session" for c in context.cookies())
        said = alert.inner_text()
        context.close()
        found = re.search(r"hpcgw user set alice --sso-subject ('[^']+')", said)
        assert found, said
        subprocess.run([*HPCGW, "--config", str(gateway.config), "user", "set", "alice",
                        "--sso-subject", *shlex.split(found[1])],
                       capture_output=True, check=True, timeout=60)
        context = browser.new_context()
        page = context.new_page()
        sign_in(page, gateway, "alice", provider["passwords"]["alice"])
        expect(page).to_have_url(f"{gateway.url}/", timeout=30_000)
        assert context.request.get(f"{gateway.url}/api/v1/admin/jobs").status == 200
        context.close()
