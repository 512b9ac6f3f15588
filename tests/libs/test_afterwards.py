"""libs.afterwards: work after the answer, in order, and inline once closing."""

from __future__ import annotations

import threading
import time

from flotilla.libs.afterwards import Afterwards


def test_runs_in_order_off_the_caller_and_inline_after_close() -> None:
    later = Afterwards("test-afterwards")
    done: list[tuple[int, str]] = []
    gate = threading.Event()
    later.run(gate.wait, 10)
    for i in range(5):
        later.run(lambda i=i: done.append((i, threading.current_thread().name)))
    time.sleep(0.05)
    assert done == []  # queued behind the gate, not run by the caller
    gate.set()
    later.wait()
    assert [i for i, _ in done] == list(range(5))
    assert all(name.startswith("test-afterwards") for _, name in done)
    later.run(lambda: time.sleep(0.1) or done.append((5, "slow")))
    later.close()  # finishes what was handed over
    assert done[-1] == (5, "slow")
    later.run(lambda: done.append((6, threading.current_thread().name)))
    assert done[-1] == (6, threading.current_thread().name)  # closing: at once, here
