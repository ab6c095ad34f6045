"""The Dockerfile (Docker is not available here): what it copies exists and survives .dockerignore, it installs the
project's production dependencies only, and runs `headwater` as a non-root user on python:3.11-slim."""
from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib

from tests.unit.ops.promql import REPO

DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str) -> bool:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or path.split("/")[0] == p for p in patterns)


def test_base_image_stages_user_and_entrypoint() -> None:
    instructions = _instructions()
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert len(stages) == 2 and all(s.startswith("${PYTHON_IMAGE}") for s in stages), stages
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    user = [rest for word, rest in final if word == "USER"]
    assert user and not user[-1].startswith(("0", "root")), user
    assert ("ENTRYPOINT", '["headwater"]') in final
    assert any(w == "COPY" and r.startswith("--from=build /opt/venv") for w, r in final)


def test_copied_paths_exist_and_are_not_ignored() -> None:
    for word, rest in _instructions():
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            if source != ".":
                assert not _ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_every_installed_package_reaches_the_build_context() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in REPO.iterdir() if (p / "__init__.py").exists()
                and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)]
    assert {"headwater", "ingest_gateway", "flows", "sinks", "schemas"} <= set(packages)
    for package in packages:
        assert not _ignored(package), f"{package} is installed by pyproject.toml but excluded by .dockerignore"
    assert not _ignored("pyproject.toml") and not _ignored("README.md")


def test_installs_production_dependencies_only() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "pip install --no-deps ." in runs
    assert "[embedded" not in runs and "[test" not in runs and "[dev" not in runs
    # The dependency list is extracted with the same one-liner the build runs.
    snippet = re.search(r'python -c "([^"]+)"', runs).group(1)  # shell double quotes keep it as written
    result = subprocess.run([sys.executable, "-c", snippet], cwd=REPO, capture_output=True, text=True, check=True)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert result.stdout.split() == project["dependencies"]
