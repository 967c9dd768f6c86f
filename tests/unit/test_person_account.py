"""Which unix accounts single sign-on may create a gateway user for: a person's, asked of the
cluster itself with ``id`` (here the real local transport and this machine's accounts)."""

from __future__ import annotations

import getpass
import os
from typing import Any

from gateway.errors import ClusterUnavailable
from gateway.jobs.clusters import make_cluster_link

PEOPLE = range(1000, 60000)  # the default: login.defs' UID_MIN..UID_MAX


async def test_system_accounts_unknown_names_and_the_gateways_own_are_no_person(
        config: Any) -> None:
    link = make_cluster_link(config.clusters[0])
    assert await link.person_account("daemon", range(1, 2))  # uid 1 counts where allowed
    for system in ("daemon", "nobody", "root"):
        assert not await link.person_account(system, PEOPLE), system
    assert not await link.person_account("no-such-account-hpcgw", PEOPLE)
    own = os.getuid()
    assert not await link.person_account(getpass.getuser(), range(own, own + 1))


async def test_a_cluster_that_cannot_tell_says_no(config: Any) -> None:
    link = make_cluster_link(config.clusters[0])

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ClusterUnavailable("the login node does not answer")

    link.transport.run = unreachable  # type: ignore[method-assign]
    assert not await link.person_account("daemon", range(1, 2))


async def test_a_cluster_that_cannot_name_the_gateways_own_account_says_no(
        config: Any) -> None:
    link = make_cluster_link(config.clusters[0])
    run = link.transport.run

    async def own_uid_unknown(argv: list[str], **kwargs: Any) -> Any:
        return await run(["false"] if argv == ["id", "-u"] else argv, **kwargs)

    link.transport.run = own_uid_unknown  # type: ignore[method-assign]
    assert not await link.person_account("daemon", range(1, 2))
