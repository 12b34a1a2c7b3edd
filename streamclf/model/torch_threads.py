"""How many threads torch's CPU kernels use on each of our threads: all the cores on one, one on the rest.

Why: torch runs its CPU kernels on OpenMP (libgomp in the PyPI wheels). Every thread that runs a
kernel with more than one thread gets a pool of OpenMP workers of its own, and the pool lives as
long as that thread. Once the process holds more pooled threads than there are cores, libgomp
stops spinning between two kernels and puts its workers to sleep at every barrier instead, and
each of the few hundred kernels of a forward pass then waits for a wake-up, and a forward pass
slows down by the sum of those waits.

So the daemon keeps exactly one pool: the model loads on a short-lived thread (its pool goes
with it), the inference thread runs the model with every core it is given, and every other
thread that touches torch (capture threads resizing frames, the main thread and the control
thread encoding label prompts) runs its kernels inline with one thread, which starts no pool.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

import torch

# torch's own default (the cores it sees), read before anything here changes it.
DEFAULT_THREADS = torch.get_num_threads()

_lock = threading.Lock()
_local = threading.local()

T = TypeVar("T")


def pin(n: int) -> None:
    """Make torch's CPU kernels on the calling thread use ``n`` threads from now on (1: inline, no pool)."""
    if getattr(_local, "threads", None) == n and torch.get_num_threads() == n:
        return
    with _lock:  # another thread's pin() in between would change the count this one copies
        torch.set_num_threads(n)  # the process-wide count, and the calling thread's
        # torch copies the process-wide count into a thread once, on the thread's first parallel
        # kernel, overwriting what the thread had. Asking for the count does that copy now, while it is n.
        torch.get_num_threads()
    _local.threads = n


def in_own_thread(fn: Callable[[], T], name: str) -> T:
    """``fn()`` on a new thread that ends when it returns (taking its OpenMP pool with it).

    Returns its result or raises its exception.
    """
    result: list = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised on the caller's thread, type and traceback kept
            error.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
