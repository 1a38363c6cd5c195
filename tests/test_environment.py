"""environment.yml (conda-forge, Binder) must list what pyproject.toml lists."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch"}
# Extras that environment.yml is expected to carry (ui needs a browser: not for Binder).
EXTRAS = ("lab", "dev")


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return {CONDA_NAME.get(_name(r), _name(r)) for r in reqs}


def _environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_conda_forge_only():
    assert _environment()["channels"] == ["conda-forge"]


def test_dependencies_match_pyproject():
    env = _environment()
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python", "pip"}
    for d in env["dependencies"]:  # what conda-forge lacks comes from PyPI, through pip
        if isinstance(d, dict):
            conda |= {_name(r) for r in d["pip"] if not r.startswith("-")}
    expected = _pyproject_names()
    assert conda == expected, (
        f"environment.yml and pyproject.toml disagree: only in environment.yml: "
        f"{sorted(conda - expected)}; only in pyproject.toml: {sorted(expected - conda)}"
    )


def test_installs_kdlib_editable_with_pip():
    pip_lists = [d["pip"] for d in _environment()["dependencies"] if isinstance(d, dict)]
    assert any(pip[-1] == "-e ." for pip in pip_lists)
