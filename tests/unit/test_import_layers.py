"""The layering contracts in pyproject.toml (`lint-imports`, run by `make lint` and CI) hold, and they
really fail when a stage imports another one or the core imports a stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("soundwatch", "ingest", "features", "scoring", "training", "dashboards", "deploy")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The packages' Python files and pyproject.toml, nothing else."""
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _inject(path: Path, line: str) -> None:
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    assert marker in text, path
    path.write_text(text.replace(marker, f"{marker}\n{line}\n", 1))


def test_the_tree_keeps_every_layering_contract(tree_copy: Path) -> None:
    result = _lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("features/app.py", "import scoring.core  # noqa", "stages do not import one another"),
        ("soundwatch/names.py", "import training.train  # noqa", "the core (soundwatch) imports no stage"),
        ("scoring/worker.py", "import deploy.main  # noqa", "stages do not import deploy"),
    ],
)
def test_a_forbidden_import_breaks_lint_imports(tree_copy: Path, module: str, bad_import: str, contract: str) -> None:
    _inject(tree_copy / module, bad_import)
    result = _lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout, result.stdout
