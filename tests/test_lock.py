"""The environment is locked: requirements.lock pins every package, transitive ones included, each with its
sha256 hashes; pyproject.toml's pins agree with it; and the running venv is exactly the lock (`make setup`
installs it, `make lock` regenerates it: docs/performance.md, "The locked environment")."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = "requirements.lock"
#: installed but not locked on purpose: this project itself, and the installer that installs the lock
NOT_LOCKED = {"cbir", "pip"}
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=sha256:[0-9a-f]{64})+)", re.M)


def parse_lock(text: str) -> dict[str, tuple[str, int]]:
    """``{canonical name: (version, number of hashes)}`` of a pip-compile ``--generate-hashes`` lock; a line
    that pins a package without a hash, or with anything but ``==``, is an error."""
    entries = {canonicalize_name(m[1]): (m[2], m[3].count("--hash=")) for m in ENTRY.finditer(text)}
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]
            if canonicalize_name(name) not in entries:
                raise ValueError(f"{LOCK}: {line!r} is not a `name==version` entry with hashes")
    return entries


def installed() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution this Python imports from."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def differences(lock: dict[str, tuple[str, int]], venv: dict[str, str]) -> list[str]:
    """What keeps ``venv`` from being exactly ``lock``, one line each (empty when they agree)."""
    found = [f"{name}: locked {version}, installed {venv.get(name, 'nothing')}"
             for name, (version, _) in sorted(lock.items()) if venv.get(name) != version]
    found += [f"{name} {version}: installed but not in {LOCK}" for name, version in sorted(venv.items())
              if name not in lock and name not in NOT_LOCKED]
    return found


@pytest.fixture(scope="module")
def lock(repo_root) -> dict[str, tuple[str, int]]:
    return parse_lock((repo_root / LOCK).read_text(encoding="utf-8"))


def test_every_locked_package_has_its_hashes_and_torch_stays_pinned(lock):
    assert len(lock) > 100  # transitive packages included, not only pyproject's
    assert not [name for name, (_, hashes) in lock.items() if hashes == 0]
    assert lock["torch"][0] == "2.14.1" and lock["torchvision"][0] == "0.29.1"
    assert "setuptools" in lock  # the editable install builds with it (--no-build-isolation)


def test_pyproject_pins_agree_with_the_lock(repo_root, lock):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    disagree = []
    for text in pins:
        req = Requirement(text)
        (spec,) = req.specifier  # every direct dependency is pinned exactly
        assert spec.operator == "==", text
        if lock.get(canonicalize_name(req.name), ("missing",))[0] != spec.version:
            disagree.append(f"{text} vs {lock.get(canonicalize_name(req.name))}")
    assert not disagree, f"pyproject.toml and {LOCK} disagree (run `make lock`): {disagree}"


def test_the_venv_is_exactly_the_lock(lock):
    found = differences(lock, installed())
    assert not found, (f"this venv differs from {LOCK} ({len(found)}): " + "; ".join(found[:10])
                       + ": run `make setup` to reinstall from the lock, or `make lock` after changing a pin")


def test_a_differing_venv_is_found():
    lock = {"numpy": ("2.4.6", 2), "fonttools": ("4.69.1", 1)}
    assert differences(lock, {"numpy": "2.4.6", "fonttools": "4.69.1", "cbir": "0.1.0", "pip": "26.3"}) == []
    assert differences(lock, {"numpy": "2.4.6", "fonttools": "4.70.0", "extra-thing": "1.0"}) == [
        "fonttools: locked 4.69.1, installed 4.70.0", "extra-thing 1.0: installed but not in requirements.lock"]
    assert differences(lock, {"fonttools": "4.69.1"}) == ["numpy: locked 2.4.6, installed nothing"]
    with pytest.raises(ValueError, match=r"'fonttools>=4' is not a `name==version` entry with hashes"):
        parse_lock("numpy==2.4.6 \\\n    --hash=sha256:" + "0" * 64 + "\nfonttools>=4\n")
    text = "# comment\nnumpy==2.4.6 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64 + "\n    # via x\n"
    assert parse_lock(text) == {"numpy": ("2.4.6", 2)}
