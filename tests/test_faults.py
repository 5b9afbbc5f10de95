"""Faults: a killed or starved run loses nothing and leaves no debris; damaged files are refused.

* SIGKILL at several points of ``extract``, ``curate`` and ``figures`` (each a real ``python -m cbir``
  subprocess in its own session, killed by an injected hook or when a file appears): afterwards no
  process of that session is left, the next run gives byte-identical outputs and no temporary file
  remains (``.cbir-tmp/`` empty, no dot-files among the outputs).
* A full disk (a 1 MiB tmpfs where the test can mount one, and always an injected ``ENOSPC``) and a
  read-only file system: one line, exit 2, no orphan.
* Permuted rows and 2,000 flipped bytes of a features file, two swapped manifest lines and flipped
  bytes in a FAISS HNSW index's stored vectors: ``query``, ``serve``'s loading, retrieve and evaluate
  refuse them in one line naming the file and the stage to rerun.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cbir import cli
from cbir.app.engine import load_database
from cbir.data.manifest import read_manifest
from cbir.errors import CbirError
from cbir.fileio import TMP_DIR, WriteError, atomic_group, atomic_path, cache_dir, clean_stale_temp
from cbir.scoring.metric_files import run as run_evaluate
from cbir.stages.extract import run as run_extract
from cbir.search.rankings import run as run_retrieve
from methods_helpers import from_conf
from test_figures_report_stages import SMALL_PARAMS

REPO = Path(__file__).resolve().parents[1]
DS = "syn"
STAGES = (["download"], ["curate"], ["extract"], ["evaluate"])
OUTPUTS = ("data/curated", "data/features", "data/retrieval", "data/index", "data/evaluation", "data/feedback",
           "data/figures", "metrics", "reports")

#: runs ``python -m cbir`` with a fault injected by $CBIR_TEST_KILL: ``before-replace:<end>`` /
#: ``after-replace:<end>`` (SIGKILL itself around the first ``os.replace`` onto a path ending so) or
#: ``fill`` (SIGKILL once the first traditional descriptor came back from the worker processes)
RUNNER = r'''
import os, signal, sys
kind, _, arg = os.environ.get("CBIR_TEST_KILL", "").partition(":")

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ != "__main__":  # a fork-server worker importing this file: inject nothing, run nothing
    kind = "worker"
elif kind in ("before-replace", "after-replace"):
    real = os.replace
    def replace(src, dst, *a, **k):
        hit = os.fspath(dst).endswith(arg)
        if hit and kind == "before-replace":
            die()
        real(src, dst, *a, **k)
        if hit and kind == "after-replace":
            die()
    os.replace = replace
elif kind == "fill":
    import cbir.features.handcrafted as handcrafted
    def fill(results, out, bar):
        for _ in results:
            die()
    handcrafted._fill = fill
if __name__ == "__main__":
    from cbir.cli import main
    sys.exit(main(sys.argv[1:]))
'''


def params_for(**split) -> dict:
    params = json.loads(json.dumps(SMALL_PARAMS))
    params["extract"] = {**params["extract"], "num_workers": 2}  # worker processes, so a kill can orphan them
    params["retrieval"]["per_method"] = {"hsv_hist": {"index": "faiss-hnsw", "faiss": {"M": 8, "efSearch": 16}}}
    params["split"].update(split)
    params["feedback"] = from_conf("feedback/default")  # `cbir query` reads its feedback settings
    return params


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start(root: Path, args, kill: str = "", runner: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CBIR_TEST_KILL": kill, "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, str(runner), "--root", str(root), "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_cli(root: Path, args, runner: Path, kill: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    proc = start(root, args, kill, runner)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def session(sid: int) -> list[str]:
    """Live (non-zombie) processes of session ``sid``: what a killed stage left running."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry.name} {cmdline[:120]}")
    return found


def no_strays(sid: int, wait: float = 10.0) -> list[str]:
    deadline = time.monotonic() + wait
    while (left := session(sid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def digests(root: Path) -> dict[str, str]:
    out = {}
    for top in OUTPUTS:
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def debris(root: Path) -> list[str]:
    """Temporary files left anywhere: in ``.cbir-tmp/`` or as dot-files among the outputs."""
    left = [f"{TMP_DIR}/{p.name}" for p in (root / TMP_DIR).iterdir()] if (root / TMP_DIR).is_dir() else []
    for top in OUTPUTS:
        left += [str(p.relative_to(root)) for p in (root / top).rglob(".*")]
    return left


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runner") / "run_cbir.py"
    path.write_text(RUNNER)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, runner) -> tuple[Path, dict]:
    """The small pipeline run once, undisturbed, through the command line: the bytes every rerun must give."""
    root = tmp_path_factory.mktemp("reference")
    write_params(root, params_for())
    for args in STAGES:
        proc = run_cli(root, args, runner)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / f"data/index/{DS}/hsv_hist/index.faiss").is_file()
    assert not debris(root)
    return root, digests(root)


def copy_of(reference_root: Path, dest: Path) -> Path:
    shutil.copytree(reference_root, dest, ignore=shutil.ignore_patterns(TMP_DIR))
    return dest


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("kill", ["fill", "before-replace:hsv_hist.npy", "after-replace:hsv_hist.npy"])
def test_killed_extract_leaves_no_process_no_debris_and_reruns_identically(reference, runner, tmp_path, kill):
    ref_root, ref = reference
    root = copy_of(ref_root, tmp_path / "run")
    for name in ("hsv_hist.npy", "hsv_hist.json"):  # as `dvc repro` does before it runs the stage
        (root / f"data/features/{DS}/{name}").unlink()
    proc = start(root, ["extract", "--method", "hsv_hist"], kill, runner)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert not no_strays(proc.pid), "worker processes outlived the killed stage"
    if kill.startswith("after-replace"):  # the features are there, their sidecar is not: refused
        with pytest.raises(CbirError, match=r"hsv_hist\.npy have no hsv_hist\.json beside them: run `dvc repro "
                                            r"extract@\w+`"):
            run_retrieve(params_for(), "hsv_hist", root)
    else:
        assert not (root / f"data/features/{DS}/hsv_hist.npy").exists()
    done = run_cli(root, ["extract", "--method", "hsv_hist"], runner)
    assert done.returncode == 0, done.stderr
    assert digests(root) == ref
    assert not debris(root)


@pytest.mark.parametrize("kill", ["before-replace:COMMIT.json", "after-replace:manifest.csv"])
def test_killed_curate_replaces_manifest_and_curation_together(reference, runner, tmp_path, kill):
    ref_root, ref = reference
    fresh = copy_of(ref_root, tmp_path / "fresh")  # what curate with split seed 1 writes, undisturbed
    write_params(fresh, params_for(seed=1))
    assert run_cli(fresh, ["curate"], runner).returncode == 0
    new = {k: v for k, v in digests(fresh).items() if k.startswith("data/curated")}
    old = {k: v for k, v in ref.items() if k.startswith("data/curated")}
    assert new != old

    root = copy_of(ref_root, tmp_path / "run")
    write_params(root, params_for(seed=1))
    proc = start(root, ["curate"], kill, runner)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and not no_strays(proc.pid)
    clean_stale_temp(root)  # what the next command does first
    curated = {k: v for k, v in digests(root).items() if k.startswith("data/curated")}
    # killed before the commit point: both old; after it (between the two renames): both new
    assert curated == (old if kill.startswith("before") else new)
    assert not debris(root)
    assert run_cli(root, ["curate"], runner).returncode == 0
    assert {k: v for k, v in digests(root).items() if k.startswith("data/curated")} == new
    assert not debris(root)


def test_killed_figures_leave_no_workers_and_rerun_identically(reference, runner, tmp_path):
    ref_root, ref = reference
    root = copy_of(ref_root, tmp_path / "run")
    proc = start(root, ["evaluate"], "", runner)  # the summary charts, drawn in worker processes
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the first figure is written
        if list((root / TMP_DIR).glob("*figures*/*.png")) if (root / TMP_DIR).is_dir() else []:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "figures finished before a figure appeared"
    assert len(session(proc.pid)) > 1, "no worker processes to orphan"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not no_strays(proc.pid), "figure workers outlived the killed stage"
    proc.communicate(timeout=60)
    assert digests(root) == ref  # the old charts are untouched: replaced all together or not at all
    done = run_cli(root, ["evaluate"], runner)
    assert done.returncode == 0, done.stderr
    assert digests(root) == ref
    assert not debris(root)


# --------------------------------------------------------------------------- full and read-only disks


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs holding a copy of the small project's inputs; skipped (reason printed) where no
    tmpfs can be mounted."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip() or proc.returncode})"
        print(f"SKIP: {reason}; the injected-ENOSPC tests below cover the same path")
        pytest.skip(reason=reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_up(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_full_disk_is_one_line_and_leaves_no_orphan(reference, runner, small_fs):
    ref_root, ref = reference
    root = small_fs
    for part in ("params.yaml", "data/raw", "data/curated"):
        src = ref_root / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / part)
    filler = fill_up(root)
    line = one_error_line(run_cli(root, ["extract", "--method", "hsv_hist"], runner))
    assert f"cannot write {root}/data/features/{DS}/hsv_hist.npy: No space left on device: free space" in line
    assert not (root / f"data/features/{DS}/hsv_hist.npy").exists() and not debris(root)
    line = one_error_line(run_cli(root, ["curate"], runner))
    assert "manifest.csv" in line and "No space left on device" in line and not debris(root)
    filler.unlink()
    assert run_cli(root, ["extract", "--method", "hsv_hist"], runner).returncode == 0
    assert digests(root)[f"data/features/{DS}/hsv_hist.npy"] == ref[f"data/features/{DS}/hsv_hist.npy"]
    assert not debris(root)


def test_read_only_disk_is_one_line_for_stages_and_params(reference, runner, small_fs):
    ref_root, _ = reference
    root = small_fs
    for part in ("params.yaml", "data/raw", "data/curated", "data/features", "conf"):
        src = (REPO if part == "conf" else ref_root) / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / part)
    assert subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True).returncode == 0
    try:
        for args, what in ((["evaluate", "--method", "hsv_hist"], f"data/retrieval/{DS}"), (["curate"], "manifest.csv"),
                           (["params"], "params.yaml")):
            line = one_error_line(run_cli(root, args, runner))
            assert what in line and "Read-only file system" in line, line
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(root)], capture_output=True)


def test_injected_enospc_at_allocation_is_one_line_and_no_orphan(reference, tmp_path, monkeypatch):
    """The tmpfs case without a tmpfs: the features' blocks cannot be allocated (before anything is mapped)."""
    ref_root, _ = reference
    root = copy_of(ref_root, tmp_path / "run")
    before = (root / f"data/features/{DS}/hsv_hist.npy").read_bytes()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    (root / f"data/features/{DS}/hsv_hist.json").unlink()  # the method is computed again, not reused
    with pytest.raises(WriteError, match=rf"cannot write .*/data/features/{DS}/hsv_hist\.npy: No space left on "
                                         r"device: free space on that disk and rerun"):
        run_extract(params_for(), root, method="hsv_hist")
    assert (root / f"data/features/{DS}/hsv_hist.npy").read_bytes() == before and not debris(root)


def test_injected_write_failures_are_one_line(reference, tmp_path, monkeypatch, capsys):
    """Full disk while writing a file, a read-only folder, a path through a file, no home for the cache."""
    ref_root, _ = reference
    root = copy_of(ref_root, tmp_path / "run")
    shutil.copytree(REPO / "conf", root / "conf")
    def write_text(self, *args, **kwargs):  # a write() that meets a full disk: no file name on the error
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (root / f"data/evaluation/{DS}/hsv_hist/inputs.json").unlink()  # the method is computed again, not reused
    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", write_text)
        assert cli.main(["--root", str(root), "-q", "evaluate", "--method", "hsv_hist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device: free space on that disk" in err[0], err
    assert not debris(root)

    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        assert cli.main(["--root", str(root), "-q", "params"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot write {root}/params.yaml: Read-only file system"), err

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WriteError, match=r"Not a directory: a part of that path is a file"):
        with atomic_path(tmp_path / "a-file" / "cache" / "x.bin") as tmp:
            tmp.write_bytes(b"x")
    monkeypatch.delenv("CBIR_CACHE", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with pytest.raises(CbirError, match="no home folder to keep the cache in: set CBIR_CACHE"):
        cache_dir()


def test_a_group_is_all_or_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    a, b = tmp_path / "out/a.txt", tmp_path / "out/b.txt"
    with atomic_group([a, b]) as (ta, tb):
        ta.write_text("1")
        tb.write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_group([a, b]) as (ta, tb):
            ta.write_text("2")
            raise RuntimeError("killed half-way")
    assert (a.read_text(), b.read_text()) == ("1", "1") and not debris(tmp_path)


# --------------------------------------------------------------------------- damaged inputs


@pytest.fixture
def damaged(reference, tmp_path):
    ref_root, _ = reference
    return copy_of(ref_root, tmp_path / "run")


def refused_everywhere(root: Path, method: str, pattern: str, capsys) -> None:
    """retrieve, evaluate, serve's loading and ``query`` refuse ``root``'s damage with ``pattern``."""
    params = params_for()
    for call in (lambda: run_retrieve(params, method, root), lambda: run_evaluate(params, root),
                 lambda: load_database(params, method, root)):
        with pytest.raises(CbirError, match=pattern):
            call()
    image = root / read_manifest(root / f"data/curated/{DS}/manifest.csv")["path"].iloc[0]
    capsys.readouterr()
    assert cli.main(["--root", str(root), "-q", "query", str(image), "--method", method]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(pattern, err[0]), err[0]


def test_permuted_feature_rows_are_refused(damaged, capsys):
    path = damaged / f"data/features/{DS}/hsv_hist.npy"
    x = np.load(path)
    order = np.arange(len(x))
    order[:10] = order[:10][::-1]
    np.save(path, x[order])
    refused_everywhere(damaged, "hsv_hist", r"hsv_hist\.npy does not match hsv_hist\.json \(rows permuted or "
                                            r"edited\): run `dvc repro extract@\w+`", capsys)


def test_flipped_feature_bytes_are_refused(damaged, capsys):
    path = damaged / f"data/features/{DS}/hsv_hist.npy"
    data = bytearray(path.read_bytes())
    offset = len(data) - np.load(path).nbytes
    positions = np.random.default_rng(0).choice(np.arange(offset, len(data)), size=min(2000, len(data) - offset),
                                                replace=False)
    for p in positions:
        data[p] ^= 0x5A
    path.write_bytes(bytes(data))
    refused_everywhere(damaged, "hsv_hist", r"hsv_hist\.npy does not match hsv_hist\.json "
                                            r"\(rows permuted or edited\)", capsys)


def test_swapped_manifest_lines_are_refused(damaged, capsys):
    manifest = damaged / f"data/curated/{DS}/manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[3], lines[4] = lines[4], lines[3]
    manifest.write_text("".join(lines))
    refused_everywhere(damaged, "hsv_hist", r"hsv_hist\.npy was computed from another manifest than the one now "
                                            r"there \(column\(s\) image_id, path, .* changed since extract.*\): "
                                            r"run `dvc repro extract@\w+`", capsys)


def test_flipped_bytes_in_hnsw_stored_vectors_are_refused(damaged, capsys):
    folder = damaged / f"data/index/{DS}/hsv_hist"
    index_file = folder / "index.faiss"
    data = bytearray(index_file.read_bytes())
    manifest = read_manifest(damaged / f"data/curated/{DS}/manifest.csv")
    first_db_row = int(np.flatnonzero(manifest["split"].to_numpy() == "database")[0])
    vector = np.load(damaged / f"data/features/{DS}/hsv_hist.npy")[first_db_row].astype(np.float32).tobytes()
    at = bytes(data).find(vector)
    assert at > 0, "the HNSW file stores the database vectors as given"
    for p in range(at, at + 64):
        data[p] ^= 0xFF
    index_file.write_bytes(bytes(data))
    params = params_for()
    pattern = (r"index\.faiss does not match index\.json \(its stored vectors or graph were damaged or edited\): "
               r"rebuild it with `dvc repro evaluate@\w+`")
    with pytest.raises(CbirError, match=pattern):
        load_database(params, "hsv_hist", damaged)
    image = damaged / manifest["path"].iloc[0]
    capsys.readouterr()
    assert cli.main(["--root", str(damaged), "-q", "query", str(image), "--method", "hsv_hist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.faiss does not match index.json" in err[0], err
    (folder / "index.json").write_text("{not json")
    with pytest.raises(CbirError, match=r"cannot read .*index\.json \(JSONDecodeError: damaged\): rebuild it"):
        load_database(params, "hsv_hist", damaged)
