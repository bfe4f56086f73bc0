"""Supervision of the daemon's tasks, and the one place errors are counted.

Every task of the daemon runs under :class:`Supervisor`: it has a name, and an
exception nobody foresaw is logged with its traceback, counted in
``errors_total{stage}`` and then, by the task's policy, either restarts the
task after a back-off or stops the process on purpose. No task dies silently,
and no bug in one task ends the others by surprise (an exception escaping a
task of the process's TaskGroup would cancel them all).

``errors_total{stage}`` is labelled from the error's type
(:func:`watcher.errors.stage_of`), never by the code that caught it: through
:func:`count_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Literal, TypeVar

import structlog

from watcher.errors import WatcherError, stage_of
from watcher.metrics import Metrics
from watcher.tuning import RESTART_FIRST, RESTART_MAX

log = structlog.get_logger()

T = TypeVar("T")

# restart: run the task again after a back-off (RESTART_FIRST, doubling per
# failure in a row, up to RESTART_MAX); the task's state must live outside it.
# stop: set the stop event, so the process shuts down cleanly and exits 1.
# end: a one-shot job; the failure is logged and counted and the task ends.
Policy = Literal["restart", "stop", "end"]


def count_error(metrics: Metrics, exc: BaseException) -> str:
    """Count ``exc`` in ``errors_total`` under its type's stage; returns the stage."""
    stage = stage_of(exc)
    metrics.errors.labels(stage).inc()
    return stage


def describe(exc: BaseException) -> str:
    """``Type: message``, for a log field or a report line."""
    return f"{type(exc).__name__}: {exc}"


def report_error(
    metrics: Metrics,
    exc: BaseException,
    event: str,
    *,
    bug: str | None = None,
    level: Literal["warning", "error"] = "error",
    **context: Any,
) -> str:
    """Count ``exc`` and log it; returns the reason, for a report.

    A product error (:class:`WatcherError`: a registry or git failure, bad
    input) is logged under ``event`` at ``level`` with its message. Anything
    else is a bug: logged as an error under ``bug`` (default ``event``) with
    its traceback.
    """
    count_error(metrics, exc)
    if isinstance(exc, WatcherError):
        (log.warning if level == "warning" else log.error)(event, **context, reason=str(exc))
        return str(exc)
    log.error(bug or event, **context, error=describe(exc), exc_info=exc)
    return f"internal error: {describe(exc)}"


def record_crash(metrics: Metrics, task: str, exc: BaseException) -> None:
    """Log an exception that escaped a task, whatever its type, with its traceback; count it."""
    stage = count_error(metrics, exc)
    log.error("task failed", task=task, stage=stage, error=describe(exc), exc_info=exc)


class Supervisor:
    """Runs named tasks in the process's TaskGroup, each with a policy for its failures."""

    def __init__(
        self,
        group: asyncio.TaskGroup,
        stop: asyncio.Event,
        metrics: Metrics,
        *,
        first: float = RESTART_FIRST,
        most: float = RESTART_MAX,
    ) -> None:
        self._group = group
        self._stop = stop
        self._metrics = metrics
        self._first = first
        self._most = most
        # The task whose failure stopped the process (the CLI exits 1), if any.
        self.fatal: str | None = None

    def spawn(
        self, name: str, run: Callable[[], Awaitable[T]], *, on_failure: Policy
    ) -> asyncio.Task[T | None]:
        """Start ``run()`` as task ``name``; ``run`` is called again for each restart.

        The task's result is what ``run()`` returned, None when it failed and ended."""
        return self._group.create_task(self._supervise(name, run, on_failure), name=name)

    async def _supervise(
        self, name: str, run: Callable[[], Awaitable[T]], on_failure: Policy
    ) -> T | None:
        loop = asyncio.get_running_loop()
        delay = self._first
        while True:
            began = loop.time()
            try:
                return await run()
            except Exception as exc:  # CancelledError is not an Exception: it ends the task
                record_crash(self._metrics, name, exc)
            if on_failure == "end":
                return None
            if on_failure == "stop":
                self.fatal = name
                log.error("stopping the process: a task it cannot run without failed", task=name)
                self._stop.set()
                return None
            if loop.time() - began >= self._most:
                delay = self._first  # it ran a good while: not a failure in a row
            log.warning("task restarting", task=name, seconds=delay)
            await sleep_until(loop.time() + delay, self._stop)
            if self._stop.is_set():
                return None
            delay = min(delay * 2, self._most)


async def sleep_until(when: float, stop: asyncio.Event) -> None:
    """Sleep until loop time ``when``, or until ``stop`` is set."""
    delay = when - asyncio.get_running_loop().time()
    if delay > 0 and not stop.is_set():
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
