"""Background tasks a worker starts and owns: at most one per key, at most a few per owner.

The poller re-sends scancel, and the lab watcher looks at each lab, in tasks of their own: such
work runs commands as a job's unix user, and that user decides how long they take (a ``sleep``
in the ``~/.bashrc`` an SSH command starts in, a slow FUSE mount of theirs), so awaiting it in
the worker's cycle would make everyone else's jobs wait for that user's (red-team findings). A
key (a job id) has at most one task at a time, so slow work is not started again while it runs;
an owner (a unix user) has at most ``per_owner`` at once, as in :class:`.fairqueue.FairQueue`.
The worker that holds a :class:`KeyedTasks` calls :meth:`KeyedTasks.close` when it ends (in a
``finally``), so its tasks never outlive it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class KeyedTasks:
    """Tasks by key, each with its owner. Used from the event loop's thread only."""

    def __init__(self, name: str, per_owner: int | None = None) -> None:
        """``name`` prefixes each task's name; ``per_owner`` None: no cap per owner."""
        self._name = name
        self._per_owner = per_owner
        self._tasks: dict[str, asyncio.Task[Any]] = {}  # key -> its task, while it runs
        self._owners: Counter[str] = Counter()  # owner -> tasks running

    def busy(self, key: str) -> bool:
        """Whether ``key``'s task is still running."""
        return key in self._tasks

    def __len__(self) -> int:
        """Tasks running."""
        return len(self._tasks)

    def start(self, key: str, owner: str,
              work: Callable[[], Coroutine[Any, Any, Any]]) -> bool:
        """Run ``work()`` in a task for ``key``; whether it was started. Nothing is started
        (``work`` is not called) while ``key`` has a task running or ``owner`` has
        ``per_owner``. What the task raises is logged, never raised again."""
        if key in self._tasks:
            return False
        if self._per_owner is not None and self._owners[owner] >= self._per_owner:
            return False
        task = asyncio.get_running_loop().create_task(work(), name=f"{self._name}-{key}")
        self._tasks[key] = task
        self._owners[owner] += 1
        task.add_done_callback(lambda done: self._finished(key, owner, done))
        return True

    def _finished(self, key: str, owner: str, task: asyncio.Task[Any]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
            self._owners[owner] -= 1
            if self._owners[owner] <= 0:
                del self._owners[owner]
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        """Cancel every task running and wait until they have ended (their commands killed,
        their cleanup run). Safe to call more than once; tasks started later run as usual."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
