"""Same bytes on every machine kind: no output holds the CPU, its ISA, the host, the time zone or timings.

The end-to-end test reruns the default's stages (the real dvc.yaml, a deep method on OpenVINO, handcrafted
methods, fusion, every figure and report) on a small generated dataset twice: here, and on a faked second
machine kind (another ISA class and CPU name, another host name, core count and time zone, patched into every
Python process by a ``sitecustomize.py``), and requires the same bytes for every DVC output and every file.
Machine facts go to the log and the run record (:mod:`cbir.machine`), which the unit tests below check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from methods_helpers import extract_rows, params_for
from pipeline_repo import pipeline_env
from pipeline_repo import run as _run
from test_pipeline_e2e import build_pipeline, dvc_outs, random_weights  # noqa: F401  (the module fixture)

from cbir import machine
from cbir.fileio import read_json

TREES = ("data", "models", "metrics", "reports")
FAKE_CPU = "Fake Kind CPU 9000 @ 1.00GHz"
FAKE_HOST = "another-machine-kind"
#: the ISA class the fake machine claims: one other than this machine's
OTHER_FLAGS = {"avx2": "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_bf16 amx_int8",
               "other": "fpu sse4_2 avx avx2 fma"}

SITECUSTOMIZE = """
import os, platform, socket
import cbir.machine
cbir.machine.CPUINFO = cbir.machine.Path({cpuinfo!r})
socket.gethostname = lambda: {host!r}
platform.node = lambda: {host!r}
os.cpu_count = lambda: 3
"""


def fake_machine(folder: Path) -> dict:
    """A ``sitecustomize.py`` (and the ``/proc/cpuinfo`` it points to) that makes every Python process of the
    pipeline see another machine kind; returns the environment additions."""
    folder.mkdir(parents=True)
    real = machine.isa_class()
    flags = OTHER_FLAGS["avx2" if real != "amx" else "other"]
    cpuinfo = folder / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {FAKE_CPU}\nflags\t\t: {flags}\n\n")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(cpuinfo=str(cpuinfo), host=FAKE_HOST))
    return {"PYTHONPATH": str(folder), "TZ": "Asia/Kathmandu"}


def file_md5s(work: Path) -> dict[str, str]:
    """``{relative path: md5}`` of dvc.lock and of every file under data/, models/, metrics/ and reports/."""
    found = {"dvc.lock": hashlib.md5((work / "dvc.lock").read_bytes()).hexdigest()}
    for tree in TREES:
        for path in sorted((work / tree).rglob("*")):
            if path.is_file():
                found[path.relative_to(work).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


@pytest.mark.slow
def test_two_machine_kinds_write_the_same_bytes(tmp_path, repo_root, random_weights):  # noqa: F811
    env = {**pipeline_env(), "TZ": "UTC"}
    here = tmp_path / "here" / "repo"
    first = build_pipeline(here, repo_root, random_weights, env)
    other_env = {**env, **fake_machine(tmp_path / "fake")}
    probe = _run([sys.executable, "-c", "import cbir.machine as m, socket; print(m.isa_class(), m.cpu_model(), "
                  "socket.gethostname())"], tmp_path, other_env).stdout.split()
    assert probe[0] != machine.isa_class() and FAKE_HOST in probe  # the fake machine really is another kind
    other = tmp_path / "other" / "repo"
    second = build_pipeline(other, repo_root, random_weights, other_env)
    assert FAKE_CPU in second.stdout + second.stderr and FAKE_CPU not in first.stdout + first.stderr  # the log says
    a, b = file_md5s(here), file_md5s(other)
    assert len(a) > 40 and a.keys() == b.keys(), sorted(set(a) ^ set(b))
    differ = sorted(p for p in a if a[p] != b[p])
    assert not differ, f"these files differ between two machine kinds: {differ}"
    assert dvc_outs(here) == dvc_outs(other)
    for work in (here, other):  # nothing the pipeline wrote is left outside git and DVC's ignores
        status = _run(["git", "status", "--porcelain", "--untracked-files=all", "--", "src", "conf", "dvc.yaml",
                       ".gitignore", ".dvcignore"], work, env).stdout
        assert status == "", status
    holding = [p for tree in TREES for p in (other / tree).rglob("*") if p.is_file() and FAKE_HOST.encode() in p.read_bytes()]
    assert not holding, f"these outputs hold the host name: {holding}"


def test_cpu_probes_read_cpuinfo(tmp_path, monkeypatch):
    fake = tmp_path / "cpuinfo"
    fake.write_text(f"processor\t: 0\nmodel name\t: {FAKE_CPU}\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f "
                    "avx512_bf16\n\nprocessor\t: 1\nmodel name\t: {FAKE_CPU}\n")
    monkeypatch.setattr(machine, "CPUINFO", fake)
    machine.cpu_flags.cache_clear()
    try:
        assert machine.cpu_model() == FAKE_CPU
        assert machine.isa_class() == "avx512-bf16"
        assert machine.cpu_isa() == {"level": "avx512", "class": "avx512-bf16",
                                     "flags": ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16"]}
    finally:
        machine.cpu_flags.cache_clear()


def test_the_run_record_holds_the_machine_and_lives_outside_git_and_dvc(tmp_path, repo_root, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: FAKE_HOST)
    path = machine.write_run_record(tmp_path, "extract@toy-m", {"seconds": 1.5, "openvino_compiled": {}})
    assert path == tmp_path / ".cbir-runs" / "extract@toy-m.json"
    record = read_json(path)
    assert list(record) == ["stage", "cpu", "isa", "cores", "host", "python", "platform", "finished_utc", "seconds",
                            "openvino_compiled"]
    assert record["stage"] == "extract@toy-m" and record["host"] == FAKE_HOST and record["seconds"] == 1.5
    assert record["isa"] == machine.cpu_isa() and record["finished_utc"].endswith("+00:00")
    assert "/.cbir-runs/" in (repo_root / ".gitignore").read_text().splitlines()
    assert ".cbir-runs/" in (repo_root / ".dvcignore").read_text().splitlines()


def test_a_deep_method_logs_the_machine_and_returns_none_of_it(tmp_path, colour_images, random_mobilenet_file,
                                                               caplog):
    cfg = {"kind": "deep", "backbone": "mobilenet_v2", "pooling": "gap"}
    from cbir.stages.weights import run as run_weights

    params = params_for(random_mobilenet_file, "openvino", "fp32", image_size=64)
    run_weights(params, "mobilenet_v2", tmp_path)
    with caplog.at_level(logging.INFO, logger="cbir"):
        rows, info = extract_rows(colour_images, cfg, params, tmp_path)
    assert rows.shape[0] == len(colour_images) and np.isfinite(rows).all()
    assert list(info) == ["device", "image_size", "batch_size", "scales", "runtime", "precision", "openvino"]
    assert info["precision"] == "fp32"
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"ran on {machine.cpu_model()} ({machine.isa_class()}, 0 decoding workers)" in logged
    assert "OpenVINO compiled 1x3x64x64 in fp32" in logged
    json.dumps(info)  # plain values only
