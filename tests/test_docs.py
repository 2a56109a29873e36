"""What the project's files promise a user: they cite only what a user has, and every option says what it does."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from tests.conftest import REPO

# Files a user reads or runs: the repository's documents, code, recipes, Spark settings and benchmark notes.
# (benchmarks/results and logs are recorded output of runs, not documents.)
USER_FILES = ("README.md", "pyproject.toml", "docs", "recipes", "sparkcurate", "conf", "benchmarks/*.md",
              "benchmarks/*.py", "benchmarks/probes")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".conf", ".toml", ".json", ".ipynb", ".txt", ".cfg", ".yaml", ".yml"}
# A path on a developer's machine: the sibling ../shared folder, or an absolute path under /work/.
MACHINE_PATH = re.compile(r"\.\./shared\b|(?:^|[\s`'\"(=:,])/work/")


def user_files() -> list[Path]:
    """The tracked files under USER_FILES (all files there when this is not a git checkout, e.g. an sdist)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--", *USER_FILES], cwd=REPO, capture_output=True,
                                check=True).stdout.decode().split("\0")
        files = [REPO / name for name in listed if name]
    except (OSError, subprocess.CalledProcessError):
        files = [p for pattern in USER_FILES for base in REPO.glob(pattern)
                 for p in ([base] if base.is_file() else base.rglob("*"))]
    return [p for p in files if p.is_file() and p.suffix in TEXT_SUFFIXES]


def test_files_cite_no_paths_on_our_machines():
    files = user_files()
    assert any(p.name == "rapids.md" for p in files) and any(p.name == "cli.py" for p in files)
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}"
             for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, "cite the repository or public sources instead:\n" + "\n".join(found)


def test_machine_path_pattern():
    for line in ("see `/work/shared/reference/x.md`", "/work/main/.venv", "from ../shared/gpu-kit",
                 "# /work/shared/reference/performance.md"):
        assert MACHINE_PATH.search(line), line
    for line in ("https://example.org/work/x", "benchmarks/NOTES.md", "--work-dir /tmp/sc", "network/work/"):
        assert not MACHINE_PATH.search(line), line


def test_every_classify_option_has_help():
    from sparkcurate.cli import build_parser

    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    classify = sub.choices["classify"]
    options = [a for a in classify._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert "--device" in {s for a in options for s in a.option_strings}
    missing = [a.option_strings[-1] for a in options if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help text: {missing}"
