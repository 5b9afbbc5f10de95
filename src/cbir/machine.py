"""What machine a run ran on, kept out of every output: the CPU, its instruction set, and the run's record.

No DVC output and no tracked file holds a machine fact (the CPU, its ISA class, the host, the time, timings),
so every machine kind writes the same bytes.  Those facts still matter for provenance, so each run that
has them logs them and leaves them in its run record, ``.cbir-runs/<stage>.json`` under the project root:
neither a DVC output nor tracked (``.gitignore`` and ``.dvcignore`` list the folder), replaced by the
stage's next run.  Where the machine changes the numbers (``extract.precision=auto`` resolving to bf16),
the output states what was computed (the features ``.json``'s ``precision``), not the machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from cbir.fileio import write_json

#: the folder of run records, under the project root (gitignored and dvcignored)
RUNS_DIR = ".cbir-runs"
#: where Linux describes the CPU
CPUINFO = Path("/proc/cpuinfo")
#: CPU flags (Linux ``/proc/cpuinfo`` names) that matter for CNN inference, in rising order
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (from ``/proc/cpuinfo`` on Linux; empty elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's answer elsewhere), for run and benchmark records."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def isa_class(flags: frozenset[str] | None = None) -> str:
    """The machine kind benchmarks are kept per: ``amx``, ``avx512-bf16``, ``avx512``, ``avx2`` or ``other``."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512f" in flags:
        return "avx512-bf16" if "avx512_bf16" in flags else "avx512"
    return "avx2" if "avx2" in flags else "other"


def cpu_isa(flags: frozenset[str] | None = None) -> dict:
    """The CPU's instruction-set summary: its widest vector level, its class and the inference-relevant flags.

    ``level`` is ``amx`` (AMX-BF16), ``avx512`` (AVX-512F), ``avx2``, ``sse4`` or the machine name; ``class``
    is :func:`isa_class`.  Which precision OpenVINO really ran is recorded beside it, never inferred from it.
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        level = "amx"
    elif "avx512f" in flags:
        level = "avx512"
    elif "avx2" in flags:
        level = "avx2"
    elif "sse4_2" in flags:
        level = "sse4"
    else:
        level = platform.machine() or "unknown"
    return {"level": level, "class": isa_class(flags), "flags": [f for f in ISA_FLAGS if f in flags]}


def machine_facts() -> dict:
    """This machine and moment: CPU model, ISA, cores, host, Python and OS, and the UTC time."""
    return {"cpu": cpu_model(), "isa": cpu_isa(), "cores": os.cpu_count(), "host": socket.gethostname(),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run_record_path(root: str | os.PathLike, stage: str) -> Path:
    """``<root>/.cbir-runs/<stage>.json`` (``stage``: the DVC stage name, e.g. ``extract@tuxpaint-hog``)."""
    return Path(root) / RUNS_DIR / f"{stage}.json"


def write_run_record(root: str | os.PathLike, stage: str, facts: Mapping) -> Path:
    """Write the run record of ``stage`` (:func:`machine_facts` and the stage's own ``facts``: timings, what
    the runtime compiled) atomically; it replaces the stage's previous record.  Returns its path."""
    path = run_record_path(root, stage)
    write_json(path, {"stage": stage, **machine_facts(), **dict(facts)})
    return path
