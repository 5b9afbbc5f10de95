"""README.md and docs/: a short front door, links and paths that resolve inside the repository, commands
that exist as printed, and no tracked file pointing outside the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from cbir.cli import build_parser

MAX_README_LINES = 200
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
#: folders a printed path must exist in (the others, data/, models/, reports/<ds>/, are outputs or examples)
TRACKED_DIRS = ("src", "tests", "conf", "benchmarks", "examples", "docs", "notebooks")


def pages(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, re.M)}


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links and anchors live in prose only)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def test_readme_is_a_front_door_of_at_most_200_lines(repo_root):
    lines = (repo_root / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines: move detail into docs/"


def test_readme_links_every_docs_page(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    linked = {m.group(1).split("#")[0] for m in LINK.finditer(readme)}
    missing = sorted(p.relative_to(repo_root).as_posix() for p in pages(repo_root)[1:]
                     if p.relative_to(repo_root).as_posix() not in linked)
    assert not missing, f"README.md does not link {missing}"


def test_every_relative_link_resolves_inside_the_repository(repo_root):
    root = repo_root.resolve()
    broken = []
    for page in pages(repo_root):
        for match in LINK.finditer(prose(page)):
            target = match.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = (page.parent / path).resolve() if path else page.resolve()
            name = f"{page.relative_to(repo_root)}: {target}"
            if not where.is_relative_to(root):
                broken.append(f"{name} (outside the repository)")
            elif not where.exists():
                broken.append(f"{name} (no such file)")
            elif anchor and where.suffix == ".md" and anchor not in anchors(where):
                broken.append(f"{name} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_printed_repository_path_exists(repo_root):
    missing = []
    for page in pages(repo_root):
        for span in CODE_SPAN.findall(page.read_text(encoding="utf-8")):
            if re.fullmatch(rf"(?:{'|'.join(TRACKED_DIRS)})/[\w./-]+", span) and not (repo_root / span).exists():
                missing.append(f"{page.relative_to(repo_root)}: {span}")
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def commands(repo_root: Path) -> list[tuple[str, list[str]]]:
    """Every shell command printed in a ``bash`` block or a code span, split into words."""
    found = []
    for page in pages(repo_root):
        text = page.read_text(encoding="utf-8")
        chunks = [m.group(1) for m in re.finditer(r"```bash\n(.*?)```", text, re.S)]
        chunks += [s for s in CODE_SPAN.findall(text) if re.match(r"(make|dvc|python|\.venv/bin/python) ", s)]
        for chunk in chunks:
            for line in chunk.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line:
                    try:
                        found.append((page.name, shlex.split(line)))
                    except ValueError:
                        found.append((page.name, line.split()))
    return found


def test_printed_commands_name_what_exists(repo_root):
    """``make`` targets, ``cbir`` commands and the configs named by ``-S group=option`` all exist."""
    makefile = (repo_root / "Makefile").read_text(encoding="utf-8")
    subcommands = build_parser(repo_root)._subparsers._group_actions[0].choices
    searchpath = repo_root / "examples" / "my_descriptor" / "conf"
    wrong = []
    for page, words in commands(repo_root):
        if words[0] == "make" and len(words) > 1 and "=" not in words[1]:
            if not re.search(rf"^{re.escape(words[1])}:", makefile, re.M):
                wrong.append(f"{page}: make {words[1]} (no such target)")
        if "cbir" in words and words[words.index("cbir") - 1] == "-m":
            rest = [w for w in words[words.index("cbir") + 1:] if not w.startswith("-")]
            if rest and rest[0] not in subcommands:
                wrong.append(f"{page}: cbir {rest[0]} (no such command)")
        for word in words:
            group = re.fullmatch(r"\+?([\w/]+)(?:@[\w.-]+)?=([\w.-]+)", word)
            if not group or not (repo_root / "conf" / group.group(1)).is_dir():
                continue
            folder, option = group.group(1), group.group(2)
            if not any((base / folder / f"{option}.yaml").is_file() for base in (repo_root / "conf", searchpath)):
                wrong.append(f"{page}: {word} (no conf/{folder}/{option}.yaml)")
    assert not wrong, "\n".join(wrong)


def test_no_tracked_file_points_outside_the_repository(repo_root):
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo_root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"git ls-files failed in {repo_root}: {exc}")
    outside = ("../" + "shared").encode()  # spelt in two parts, so this file does not name it
    hits = [name for name in listed.decode().split("\0")
            if name and (repo_root / name).is_file() and outside in (repo_root / name).read_bytes()]
    assert not hits, f"tracked files pointing at a folder beside the repository: {hits}"
