"""Crash points for the crash-safety harness (tests/test_crash_safety.py).

Production code calls :func:`crashpoint` at the places where a crash is most
likely to leave something half-done (before and after renames, fsyncs and
commits). Unless ``SAFEGENE_FAULT_KILL_AT`` is set, it does nothing. Set to a
number N, the N-th crash point reached kills the process with SIGKILL, exactly
as a power cut or the OOM killer would; set to ``count`` it only logs.
``SAFEGENE_FAULT_LOG`` names a file that receives one label per point reached.
"""

from __future__ import annotations

import os
import signal

_KILL_AT = "SAFEGENE_FAULT_KILL_AT"
_LOG = "SAFEGENE_FAULT_LOG"
_count = 0


def crashpoint(label: str) -> None:
    target = os.environ.get(_KILL_AT)
    if not target:
        return
    global _count
    _count += 1
    log = os.environ.get(_LOG)
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{_count}\t{label}\n")
    if target != "count" and _count == int(target):
        os.kill(os.getpid(), signal.SIGKILL)
