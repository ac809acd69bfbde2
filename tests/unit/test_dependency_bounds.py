"""pyproject's dependency bounds admit what is installed and agree with what faust-streaming requires."""

from __future__ import annotations

import tomllib
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _runtime() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {(r := Requirement(d)).name: r for d in deps}


def test_every_runtime_dependency_bound_admits_the_installed_version():
    for name, req in _runtime().items():
        assert req.specifier.contains(version(name), prereleases=True), f"{name} {version(name)} not in {req}"


def test_the_bounds_the_code_relies_on():
    deps = _runtime()
    assert not deps["kafka-python"].specifier.contains("2.1.5")  # no enable_idempotence / delivery_timeout_ms
    assert "click" in deps and "typer" in deps  # deploy/main.py imports both
    faust_click = next(Requirement(r) for r in requires("faust-streaming") or [] if Requirement(r).name == "click")
    for probe in ("8.3.9", "8.4.0", "9.0"):  # ours admits no click that faust-streaming refuses
        if deps["click"].specifier.contains(probe):
            assert faust_click.specifier.contains(probe), f"click {probe}: we allow it, faust-streaming does not"
