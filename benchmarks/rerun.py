"""One method's search setting changed, end to end: how long `dvc exp run` takes, and which stages it reran.

Run on a built workspace (`make repro` first, `dvc status` clean).  It runs
`dvc exp run -S +retrieval/search@retrieval.per_method.<method>=aqe` (alpha QE; default method: hog) without
DVC's run cache, so a change measured before is recomputed, not restored (the CLI has no switch for that:
DVC's Python API, ``experiments.run(..., run_cache=False)``, in a child process, prints the same lines), records the wall time
and the stages DVC ran, then puts the workspace back (`dvc exp remove`, `git checkout` of params.yaml,
dvc.lock, metrics/ and reports/, `dvc checkout`).  Writes benchmarks/results/rerun-<isa class>.json.

    python benchmarks/rerun.py [--method hog]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from cbir.machine import cpu_isa, isa_class

ROOT = Path(__file__).resolve().parent.parent
RESTORE = ["params.yaml", "dvc.lock", "metrics", "reports", "README.md"]
#: ``dvc exp run -n NAME -S OVERRIDE`` with the run cache off (what ``dvc repro --no-run-cache`` does)
EXP_RUN = """
import sys
from dvc.logger import setup
from dvc.repo import Repo
setup()
with Repo(".") as repo:
    repo.experiments.run(name=sys.argv[1], params=[sys.argv[2]], run_cache=False)
print("Ran experiment(s):", sys.argv[1])
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, check=check)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def timed_run(cmd: list[str]) -> tuple[int, str, list[tuple[float, str]]]:
    """Run ``cmd``; its return code, output and ``(seconds since start, line)`` for every output line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line.rstrip("\n")))
    proc.wait()
    lines.append((time.perf_counter() - start, ""))
    return proc.returncode, "\n".join(line for _, line in lines), lines


def stage_seconds(lines: list[tuple[float, str]]) -> tuple[dict[str, float], float, float]:
    """Seconds per stage (one "Running stage" line to the next), before the first and after the last."""
    marks = [(t, m.group(1)) for t, line in lines if (m := re.match(r"Running stage '([^']+)'", line))]
    marks = [mark for i, mark in enumerate(marks) if i == 0 or mark[1] != marks[i - 1][1]]  # a line printed twice
    end = lines[-1][0]
    if not marks:
        return {}, round(end, 1), 0.0
    per_stage = {name: round(nxt - t, 1) for (t, name), (nxt, _) in zip(marks, marks[1:])}
    last_t, last = marks[-1]
    finished = next((t for t, line in lines if t > last_t and line.startswith("Ran experiment")), end)
    per_stage[last] = round(finished - last_t, 1)
    return per_stage, round(marks[0][0], 1), round(end - finished, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="hog")
    parser.add_argument("--name", default="bench-rerun-aqe")
    args = parser.parse_args()
    dvc = [sys.executable, "-m", "dvc"]
    status = sh(*dvc, "status", "-q", check=False)
    if status.returncode != 0:
        print("error: the workspace is not built or not clean (dvc status): run `make repro` first", file=sys.stderr)
        return 2
    override = f"+retrieval/search@retrieval.per_method.{args.method}=aqe"
    load_before = os.getloadavg()
    start = time.perf_counter()
    returncode, output, lines = timed_run([sys.executable, "-c", EXP_RUN, args.name, override])
    seconds = time.perf_counter() - start
    ran = list(dict.fromkeys(re.findall(r"Running stage '([^']+)'", output)))
    per_stage, dvc_start, dvc_finish = stage_seconds(lines)
    try:
        if returncode != 0:
            print(output[-4000:], file=sys.stderr)
            return 1
    finally:
        sh(*dvc, "exp", "remove", args.name, check=False)
        sh("git", "checkout", "--", *RESTORE, check=False)
        sh(*dvc, "checkout", "-q", check=False)
    isa = isa_class()
    result = {"what": f"dvc exp run -S {override} (run cache off)", "method": args.method, "seconds": round(seconds, 1),
              "stages_run": ran, "n_stages_run": len(ran), "stage_seconds": per_stage,
              "dvc_start_s": dvc_start, "dvc_finish_s": dvc_finish,
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
              "cpu": cpu_model(), "isa": cpu_isa(), "isa_class": isa, "target_s": 20}
    out = ROOT / "benchmarks" / "results" / f"rerun-{isa}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{seconds:.1f} s, {len(ran)} stages: {', '.join(ran)} -> {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
