"""The house's shape (docs/ARCHITECTURE.md): the import direction, no import circles,
thin entry points, settings read only at the top, one source for shared defaults."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from cache.defaults import DEFAULT_CACHE_DIR, DEFAULT_DISK_MAX_AGE, DEFAULT_DISK_MAX_SIZE
from runtime.settings import Settings
from tests.conftest import ROOT

PACKAGES = ("runtime", "web", "pipeline", "similarity", "cache", "bench")
ENTRY_POINTS = ("app.py", "prewarm.py")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_the_import_contracts_hold() -> None:
    """runtime -> web -> pipeline -> similarity -> cache, and the forbidden imports (pyproject.toml)."""
    lint = ROOT / ".venv" / "bin" / "lint-imports"
    command = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    done = subprocess.run([*command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    circles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(imported, module, as_packages=False):
                circles.add(tuple(sorted((module, imported))))
    # A package's __init__ re-exporting its own modules is not a circle between modules.
    circles = {c for c in circles if not any(a.startswith(f"{b}.") or b.startswith(f"{a}.") for a, b in [c])}
    assert circles == set()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_thin_and_import_only_the_runtime(entry: str) -> None:
    tree = ast.parse((ROOT / entry).read_text())
    imported = {
        node.module.split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    }
    assert imported <= {"sys", "runtime"}
    assert len((ROOT / entry).read_text().splitlines()) < 30


def test_nothing_imports_an_entry_point() -> None:
    """`python prewarm.py` loads prewarm once: no module imports app or prewarm."""
    for path in python_files(*PACKAGES, "tests", "scripts"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            assert not {"app", "prewarm"} & set(names), f"{path} imports an entry point"


def test_only_the_composition_roots_read_the_environment() -> None:
    """Settings are read once at the top (runtime/settings.py; `python -m cache`, its own
    command line) and handed down: the pipeline and the cache read no variables."""
    reads = re.compile(r"os\.environ\.get|os\.getenv|os\.environ\[[^]]+\](?!\s*=)")
    readers = {
        str(p.relative_to(ROOT))
        for p in python_files("pipeline", "similarity", "cache", "web")
        if reads.search(p.read_text())
    }
    assert readers == {"cache/__main__.py"}


def test_the_cache_command_and_the_cron_line_use_the_service_defaults() -> None:
    fields = Settings.model_fields
    assert fields["cache_dir"].default == DEFAULT_CACHE_DIR
    assert (fields["disk_cache_size"].default, fields["disk_cache_max_age"].default) == (
        DEFAULT_DISK_MAX_SIZE,
        DEFAULT_DISK_MAX_AGE,
    )
    help_text = subprocess.run(
        [sys.executable, "-m", "cache", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    ).stdout
    assert "--cache-dir" in help_text
    from cache.__main__ import DEFAULT_CACHE_DIR as cli_default

    assert cli_default is DEFAULT_CACHE_DIR
    cron = (ROOT / "deploy" / "cron" / "z-image-turbo").read_text()
    env = (ROOT / "deploy" / "z-image-turbo.env").read_text()
    (line,) = [line for line in cron.splitlines() if "-m cache prune" in line]
    assert f"--max-age {DEFAULT_DISK_MAX_AGE} " in line and f"--max-size {DEFAULT_DISK_MAX_SIZE};" in line
    assert re.search(r"^ZIMAGE_CACHE_DIR=(\S+)$", env, re.M)[1] in line  # the service's directory
    assert f"ZIMAGE_DISK_CACHE_SIZE={DEFAULT_DISK_MAX_SIZE}" in env
    assert f"ZIMAGE_DISK_CACHE_MAX_AGE={DEFAULT_DISK_MAX_AGE}" in env


def test_nothing_is_installed_under_our_folder_names() -> None:
    """The install brings the dependencies only: from elsewhere, our folders are not importable."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util as u; print([u.find_spec(n) for n in ('cache', 'similarity', 'pipeline', 'web', 'runtime', 'bench', 'app', 'prewarm')])",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == str([None] * 8), done.stdout + done.stderr
