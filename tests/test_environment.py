"""environment.yml (conda-forge cannot be reached here, so this is its test): it parses, and names the
same dependencies, with the same lower bounds, as pyproject.toml's runtime dependencies plus the
`notebooks` extra; the package itself comes from its pip section with that extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

#: conda-forge package name -> PyPI distribution name, where they differ
CONDA_TO_PYPI = {"pytorch": "torch"}
#: conda entries that are not Python dependencies of the package
TOOLING = {"python", "pip"}


def pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["notebooks"]]
    assert all(r.marker is None and not r.extras for r in reqs)  # otherwise the comparison needs more care
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def environment() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert isinstance(env, dict)
    return env


def conda_requirements(env) -> dict[str, SpecifierSet]:
    out = {}
    for entry in env["dependencies"]:
        if not isinstance(entry, str):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*((?:[<>=!~].*)?)", entry.strip())
        assert m, f"cannot parse conda spec {entry!r}"
        name, spec = m.groups()
        if name in TOOLING:
            continue
        name = canonicalize_name(CONDA_TO_PYPI.get(name, name))
        assert name not in out, f"{name} listed twice"
        out[name] = SpecifierSet(spec)
    return out


def test_environment_yml_parses_with_conda_forge_and_python_311():
    env = environment()
    assert env["name"] == "mambalrp-tools"
    assert env["channels"] == ["conda-forge"]
    strings = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in strings and "pip" in strings


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    conda, pypi = conda_requirements(environment()), pyproject_requirements()
    assert set(conda) == set(pypi), {"only in environment.yml": set(conda) - set(pypi),
                                     "only in pyproject.toml": set(pypi) - set(conda)}
    for name, spec in pypi.items():
        assert conda[name] == spec, f"{name}: environment.yml {conda[name]} vs pyproject {spec}"


def test_environment_yml_installs_the_package_with_the_notebooks_extra():
    pip_sections = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict)]
    assert len(pip_sections) == 1
    assert pip_sections[0] == ["-e .[notebooks]"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "notebooks" in extras and {"gpu", "dev"} <= set(extras)


def test_name_map_is_needed_and_complete():
    """The map is not dead weight: each mapped conda name is used, and torch is only there as pytorch."""
    strings = " ".join(d for d in environment()["dependencies"] if isinstance(d, str))
    for conda_name in CONDA_TO_PYPI:
        assert re.search(rf"(^|\s){conda_name}\b", strings)
    assert not re.search(r"(^|\s)torch\b", strings)
