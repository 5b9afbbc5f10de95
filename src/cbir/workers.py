"""Worker processes die with their parent: a killed stage leaves no process behind.

:func:`die_with_parent` is the initializer of every worker pool (the traditional descriptors, the
figures writer).  On Linux the kernel kills the worker when its parent exits
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``; a fork-server worker's parent is the fork server, which exits
when the stage does); everywhere a daemon thread also watches the stage's own process and ends the
worker within a second of its death.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

from cbir.fileio import process_alive

PR_SET_PDEATHSIG = 1


def _watch(pid: int, period: float) -> None:
    while process_alive(pid):
        time.sleep(period)
    os._exit(1)


def die_with_parent(stage_pid: int, period: float = 0.5) -> None:
    """End this process when its parent, or the stage process ``stage_pid``, is gone (pool initializer)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - a libc without prctl: the thread still watches
            pass
    if not process_alive(stage_pid):  # it died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(stage_pid, period), daemon=True, name="die-with-parent").start()
