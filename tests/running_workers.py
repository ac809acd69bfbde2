"""Test helpers every test directory may import (``tests/`` is on ``sys.path``: rootdir conftest)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from soundwatch.settings import Settings


@contextlib.contextmanager
def running_worker(settings: Settings, join_timeout_s: float = 60.0, **kwargs: object) -> Iterator:
    """An in-process ScoringWorker in a thread; stopped (flush + commit) on exit."""
    from scoring.worker import ScoringWorker

    worker = ScoringWorker(settings, **kwargs)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=target, name="scoring-worker", daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(60), "worker got no partitions within 60 s"
        if errors:
            raise errors[0]
        yield worker
    finally:
        worker.stop()
        thread.join(join_timeout_s)
        assert not thread.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]
