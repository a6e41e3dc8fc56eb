"""Playback's own thread pool: bounded, named daemon threads, cancel-friendly, never joined at exit."""

from __future__ import annotations

import subprocess
import sys
import threading

from bridge.media.playback import MAX_THREADS, _PlaybackThreads, playback_threads

WAIT = 10.0


def test_the_pool_is_bounded_and_queues_beyond_its_threads() -> None:
    pool = _PlaybackThreads(2, "bounded")
    gate = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> str:
        started.release()
        gate.wait(WAIT)
        return threading.current_thread().name

    futures = [pool.submit(hold) for _ in range(3)]
    assert started.acquire(timeout=WAIT)
    assert started.acquire(timeout=WAIT)
    assert pool.threads == 2  # the third call waits for a thread instead of starting one
    assert not futures[2].running()
    gate.set()
    names = {f.result(WAIT) for f in futures}
    assert names <= {"bounded-1", "bounded-2"}
    assert pool.threads == 2


def test_work_cancelled_before_a_thread_took_it_never_runs() -> None:
    pool = _PlaybackThreads(1, "cancel")
    gate = threading.Event()
    ran: list[int] = []
    busy = pool.submit(gate.wait, WAIT)
    waiting = pool.submit(ran.append, 1)
    assert waiting.cancel()
    gate.set()
    assert busy.result(WAIT) is True
    assert pool.submit(ran.append, 2).result(WAIT) is None  # the thread took, and skipped, the first
    assert ran == [2]


def test_errors_reach_the_caller_and_idle_threads_are_reused() -> None:
    pool = _PlaybackThreads(4, "reuse")
    for n in range(5):
        assert pool.submit(pow, n, 2).result(WAIT) == n * n
    failed = pool.submit(int, "not a number")
    assert isinstance(failed.exception(WAIT), ValueError)
    assert pool.threads == 1  # one at a time: the idle thread took each call


def test_the_process_pool_is_shared_named_and_made_of_daemons() -> None:
    pool = playback_threads()
    assert pool is playback_threads()
    name, daemon = pool.submit(
        lambda: (threading.current_thread().name, threading.current_thread().daemon)
    ).result(WAIT)
    assert name.startswith("playback-")
    assert daemon
    assert pool.threads <= MAX_THREADS


def test_a_thread_blocked_forever_does_not_hold_up_the_exit() -> None:
    # What a read of a URL that stopped sending looks like to the pool: a call that does not return.
    script = (
        "import threading\n"
        "from bridge.media.playback import playback_threads\n"
        "started = threading.Event()\n"
        "playback_threads().submit(lambda: (started.set(), threading.Event().wait()))\n"
        "assert started.wait(10)\n"
        "print('exiting', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "exiting"), done.stderr
