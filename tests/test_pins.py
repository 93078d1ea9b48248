"""The version pins live in ``pyproject.toml``; ``environment.yml`` and ``benchmarks/gpu_wheels.sh``
repeat some of them and must agree, and every pinned package must install on the oldest Python the
project declares (a pin that needs a newer Python gives users a baffling "no matching distribution")."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _pins() -> dict[str, str]:
    """Name -> version of every exact (``==``) pin in the core and the extras."""
    project = _project()
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pins: dict[str, str] = {}
    for text in reqs:
        req = Requirement(text)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def _mismatches(requirements: list[str], pins: dict[str, str]) -> list[str]:
    out = []
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in pins and str(req.specifier) != f"=={pins[name]}":
            out.append(f"{text!r} but pyproject.toml pins {name}=={pins[name]}")
    return out


def test_pyproject_pins_the_stack() -> None:
    pins = _pins()
    for name in ("torch", "transformers", "numpy", "ruff", "mypy", "pytest", "hypothesis"):
        assert name in pins, f"pyproject.toml must pin {name} exactly"


def test_environment_yml_repeats_the_same_pins() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    requirements = [r for r in pip_section if not r.startswith("-")]
    assert not _mismatches(requirements, _pins())  # a loose entry ("numpy") mismatches too


def test_gpu_wheels_carry_the_pinned_versions() -> None:
    script = (ROOT / "benchmarks" / "gpu_wheels.sh").read_text()
    requirements = re.findall(r"(?<![\w.-])([A-Za-z][\w.-]*==[\w.]+)", script)
    assert any(r.startswith("transformers==") for r in requirements)
    assert not _mismatches(requirements, _pins())


def test_every_pin_installs_on_the_oldest_declared_python() -> None:
    declared = SpecifierSet(_project()["requires-python"])
    oldest = min(v for v in (Version(f"3.{m}") for m in range(8, 20)) if v in declared)
    checked, bad = 0, []
    for name, version in _pins().items():
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.version != version:
            continue  # another version installed: its metadata says nothing about the pin
        needs = dist.metadata.get("Requires-Python")
        checked += 1
        if needs and oldest not in SpecifierSet(needs):
            bad.append(f"{name}=={version} needs Python {needs}")
    if not checked:
        pytest.skip("none of the pinned packages is installed at its pinned version")
    assert not bad, f"requires-python allows {oldest}, but {bad}: raise requires-python"
