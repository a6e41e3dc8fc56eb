"""Owned background tasks: every task has an owner that cancels it on close and hears of its failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class OwnedTasks:
    """A set of tasks spawned by one object; a failure is logged with ``what`` (never swallowed)."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("task failed: %s", self._what, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel every task but the current one; returns them."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        return tasks

    async def aclose(self, timeout_s: float) -> None:
        """Cancel every task and wait up to ``timeout_s`` for them to finish."""
        tasks = self.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


async def wait_all_set(events: list[asyncio.Event], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for every one of ``events`` to be set; False when time ran out.

    Owners that end their work by asking (a reason, a wake-up) wait here before they cancel what is
    left, so work that is finishing on its own gets to report its end.
    """
    if not events:
        return True
    try:
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), timeout_s)
    except TimeoutError:
        return False
    return True
