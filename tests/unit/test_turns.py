"""A lock fair between owners (gateway/turns.py): the order waiters get it in, cancellations."""

from __future__ import annotations

import asyncio

import pytest

from gateway.turns import Turns

WAIT = 10.0


async def hold(turns: Turns, owner: str, served: list[str], release: asyncio.Event) -> None:
    async with turns.turn(owner):
        served.append(owner)
        await release.wait()


async def settle() -> None:
    """Let every ready task run up to its next wait."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_owners_take_turns_and_each_keeps_its_own_order() -> None:
    """bob holds the lock with two more of his waiting, then alice and carol ask: after bob
    come alice, carol, then bob's next (not all of bob's first)."""
    turns, served, release = Turns(), list[str](), asyncio.Event()
    tasks = [asyncio.create_task(hold(turns, "bob", served, release))]
    await settle()
    tasks += [asyncio.create_task(hold(turns, owner, served, release))
              for owner in ("bob", "bob", "alice", "carol", "alice")]
    await settle()
    assert served == ["bob"]  # one holder at a time
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert served == ["bob", "alice", "carol", "bob", "alice", "bob"]


async def test_a_waiter_cancelled_before_its_turn_leaves_the_line() -> None:
    turns, served, release = Turns(), list[str](), asyncio.Event()
    first = asyncio.create_task(hold(turns, "bob", served, release))
    await settle()
    leaving = asyncio.create_task(hold(turns, "alice", served, release))
    staying = asyncio.create_task(hold(turns, "carol", served, release))
    await settle()
    leaving.cancel()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, staying), WAIT)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert served == ["bob", "carol"]


async def test_a_waiter_cancelled_as_its_turn_came_passes_it_on() -> None:
    """If the task whose turn has just come is cancelled before it runs, the lock goes to
    the next waiter instead of staying held by nobody."""
    turns, served, release = Turns(), list[str](), asyncio.Event()
    release.set()
    gate = asyncio.Event()

    async def first() -> None:
        async with turns.turn("bob"):
            await gate.wait()

    holder = asyncio.create_task(first())
    await settle()
    unlucky = asyncio.create_task(hold(turns, "alice", served, release))
    after = asyncio.create_task(hold(turns, "carol", served, release))
    await settle()
    gate.set()
    await asyncio.sleep(0)  # the holder leaves and hands the turn to alice's waiter ...
    unlucky.cancel()  # ... which is cancelled before it runs
    await asyncio.wait_for(asyncio.gather(holder, after, return_exceptions=True), WAIT)
    assert served == ["carol"]
    async with asyncio.timeout(WAIT):  # and the lock is free again
        async with turns.turn("dave"):
            pass
