"""DVC's own cost beside the pipeline's work: a fresh `dvc repro` of the default, stage by stage, then a no-op
`dvc repro`, `dvc status`, a forced rerun of the lightest stage (`across`) and the size of `dvc.lock`.

A stage's own time is what its process reports at exit (``stage <name>: <s> s in this process``: interpreter
start-up and imports included, ``cbir.cli``); DVC's bookkeeping is the rest of the wall time (hashing deps and
outputs, the run cache, rewriting `dvc.lock`).  The fresh run happens in a clone of the committed HEAD (its own
empty DVC cache; the OpenVINO conversions in ~/.cache/cbir are kept unless you clear them), with this checkout's
.venv.  Writes benchmarks/results/pipeline-<isa class>.json and prints the per-stage table.

    python benchmarks/pipeline.py [--clone /tmp/cbir-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
from cbir.machine import cpu_model, isa_class  # noqa: E402  (the CPU probes every benchmark names its results by)

STAGE_DONE = re.compile(r"INFO stage (\w+): ([0-9.]+) s in this process")
RUNNING = re.compile(r"Running stage '([^']+)'")


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, int, list[str]]:
    """Wall seconds, return code and output lines of ``cmd``."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout.splitlines()  # DVC's and the stages' lines in order


def stage_table(lines: list[str]) -> list[dict]:
    """Per stage run: its name and its process's own seconds (from the stage's last log line)."""
    rows, current = [], None
    for line in lines:
        if m := RUNNING.search(line):
            current = m.group(1)
        elif (m := STAGE_DONE.search(line)) and current:
            rows.append({"stage": current, "work_s": float(m.group(2))})
            current = None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", type=Path, default=Path("/tmp/cbir-bench-pipeline"))
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    args = parser.parse_args()
    venv = ROOT / ".venv"
    if not (venv / "bin" / "python").is_file():
        print("error: no .venv in this checkout: run `make setup` first", file=sys.stderr)
        return 2
    if args.clone.exists():
        shutil.rmtree(args.clone)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(args.clone)], check=True)
    os.symlink(venv, args.clone / ".venv")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    dvc = [str(venv / "bin" / "python"), "-m", "dvc"]
    load_before = os.getloadavg()
    fresh_s, rc, lines = timed(dvc + ["repro"], args.clone, env)
    if rc != 0:
        print("\n".join(lines[-40:]), file=sys.stderr)
        return 1
    stages = stage_table(lines)
    work = sum(r["work_s"] for r in stages)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=args.clone, capture_output=True, text=True).stdout
    noop_s, _, _ = timed(dvc + ["repro"], args.clone, env)
    status_s, _, _ = timed(dvc + ["status"], args.clone, env)
    forced_s, _, forced = timed(dvc + ["repro", "-f", "-s", "across"], args.clone, env)
    across = stage_table(forced)
    result = {
        "machine": {"cpu": cpu_model(), "isa_class": isa_class(), "cpu_count": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "fresh_repro_s": round(fresh_s, 1), "stages_run": len(stages), "stage_work_s": round(work, 1),
        "dvc_bookkeeping_s": round(fresh_s - work, 1), "dvc_share": round((fresh_s - work) / fresh_s, 3),
        "per_stage": stages, "noop_repro_s": round(noop_s, 2), "status_s": round(status_s, 2),
        "forced_across_s": round(forced_s, 2), "across_work_s": across[0]["work_s"] if across else None,
        "dvc_lock_lines": len((args.clone / "dvc.lock").read_text().splitlines()),
        # tracked files the fresh run changed (a clean clone's repro should change none: same bytes everywhere)
        "git_status_after_repro": dirty.splitlines(),
        "targets": {"fresh_repro_s": 180, "noop_repro_s": 4, "dvc_lock_lines": 2500, "dvc_share": 0.25},
    }
    out = ROOT / "benchmarks" / "results" / f"pipeline-{isa_class()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'stage':28s} {'work s':>7s}")
    for row in stages:
        print(f"{row['stage']:28s} {row['work_s']:7.1f}")
    print(f"fresh dvc repro {fresh_s:.1f} s ({len(stages)} stages, work {work:.1f} s, DVC {fresh_s - work:.1f} s = "
          f"{100 * (fresh_s - work) / fresh_s:.0f}%); no-op {noop_s:.2f} s; status {status_s:.2f} s; "
          f"forced across {forced_s:.2f} s; dvc.lock {result['dvc_lock_lines']} lines; "
          f"{len(result['git_status_after_repro'])} tracked files changed -> {out.relative_to(ROOT)}")
    if not args.keep:
        shutil.rmtree(args.clone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
