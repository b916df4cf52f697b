"""Stop requests: SIGINT, SIGTERM or a parent's death, honoured at step boundaries.

A signal handler that raises inside a training step leaves the run half-way
through an update: a checkpoint taken then is one step off (optimizer state,
step counters, RNG) and resume is no longer exact; raised inside a library it
can even surface as that library's own error. So the first SIGINT or SIGTERM
only *requests* a stop; the training loop looks at the request between steps,
checkpoints there and ends the run as interrupted. A second signal means "now":
it raises ``KeyboardInterrupt`` at once, the run is marked interrupted and
resumes from its last checkpoint.

A sweep member running in a worker process also stops when the sweep that
started it dies (``stop_with_parent``), so no orphan keeps writing runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class _Request:
    """The one stop request of this process (set from a signal handler or a watchdog thread)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum: int | None = None

    def set(self, reason: str, signum: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signum = reason, signum

    def clear(self) -> None:
        self.reason = self.signum = None


_request = _Request()


def requested() -> bool:
    """Whether something asked this process to stop at the next step boundary."""
    return _request.reason is not None


def reason() -> str | None:
    """Why (e.g. "SIGTERM"), or None."""
    return _request.reason


def exit_code() -> int:
    """The conventional exit code of the stop: 128 + signal number (130 for Ctrl-C)."""
    return 128 + int(_request.signum or signal.SIGINT)


def request(reason: str, signum: int | None = None) -> None:
    """Ask the loop to stop at the next step boundary (used by handlers and watchdogs)."""
    _request.set(reason, signum)


def _handler(signum: int, frame: Any) -> None:
    if requested():
        raise KeyboardInterrupt()  # the second signal: stop now
    request(SIGNAL_NAMES.get(signum, f"signal {signum}"), signum)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM request a stop instead of raising (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNAL_NAMES}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _request.clear()  # honoured by now; the next run in this process starts afresh


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C (for commands that clean up in ``finally``, e.g. export)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def watch(condition: Callable[[], bool], reason: str, interval: float = 0.5) -> threading.Event:
    """Request a stop once ``condition()`` holds, polled by a daemon thread; set the returned event to end it."""
    done = threading.Event()

    def poll() -> None:
        while not done.wait(interval):
            if condition():
                request(reason, signal.SIGTERM)
                return

    threading.Thread(target=poll, name="peftlab-stop-watch", daemon=True).start()
    return done


def stop_with_parent(parent_pid: int, interval: float = 0.5) -> threading.Event:
    """Request a stop once ``parent_pid`` is no longer this process's parent (it died).

    When the parent dies the process is re-parented, whatever killed the parent
    (kill -9 included).
    """
    return watch(lambda: os.getppid() != parent_pid, "the sweep that started this run has ended", interval)
