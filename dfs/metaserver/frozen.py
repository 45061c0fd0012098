"""Work on a frozen copy of this process in a forked child, while the parent goes on.

A backup of the namespace must be one consistent state, yet writing a large namespace
takes seconds, and the Raft thread may not stop applying the log meanwhile. A fork
gives the child the state as it was at that instant (memory is shared copy-on-write),
and the parent carries on at once: what stands still is the fork itself. PySyncObj
writes its own snapshots the same way.

Only the thread that forks exists in the child. So the caller forks while it holds
the lock that applies the log (no operation is half done in the copy), and the child
does nothing but its work: it takes no lock another thread might have held, runs no
reactor, logs nothing, and leaves with ``os._exit``, which runs no cleanup meant for
the parent. It closes every file descriptor it did not ask to keep, so that it holds
no listening socket or journal of the parent's, and it dies on SIGTERM and SIGINT
instead of handing them to a reactor that does not run in it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable, Collection

#: Exit status of a child whose work returned, and of one whose work raised.
DONE = 0
FAILED = 1


def fork_child(work: Callable[[], None], keep: Collection[int] = ()) -> int:
    """Run ``work`` in a forked child; the child's pid, in the parent. The child
    exits with :data:`DONE` once ``work`` returns and :data:`FAILED` if it raises;
    it keeps the descriptors 0, 1, 2 and ``keep``, and closes every other."""
    pid = os.fork()
    if pid != 0:
        return pid
    status = FAILED
    try:
        _become_child(keep)
        work()
        status = DONE
    finally:
        os._exit(status)


def _become_child(keep: Collection[int]) -> None:
    # Collecting garbage walks every object and writes to each one's header: it
    # would copy the parent's whole heap into the child for nothing.
    gc.disable()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    with contextlib.suppress(ValueError):  # not the main thread: nothing was set
        signal.set_wakeup_fd(-1)
    low = 3
    for fd in sorted(fd for fd in keep if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        limit = -1
    return limit if limit > 0 else 65536
