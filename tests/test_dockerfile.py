"""The Dockerfile builds a small non-root image that runs with a read-only root filesystem.

No Docker engine runs here: the Dockerfile is parsed, and the slow test repeats its install
steps (wheel, venv without pip, pre-compiled bytecode) in a fresh venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CHART_VALUES = REPO / "helm" / "forestreet-sidecar" / "values.yaml"


@dataclass(frozen=True, slots=True)
class Instruction:
    stage: int  # index of the FROM this instruction belongs to
    op: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if logical and line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1].strip() + " "
            continue
        logical += line
        op, _, args = logical.partition(" ")
        if op.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, op.upper(), args.strip()))
        logical = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def ops(instructions: list[Instruction], op: str, stage: int | None = None) -> list[str]:
    return [i.args for i in instructions if i.op == op and (stage is None or i.stage == stage)]


def final_stage(instructions: list[Instruction]) -> int:
    return max(i.stage for i in instructions)


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """Default values of the ARGs (global and per stage)."""
    defaults: dict[str, str] = {}
    for a in ops(instructions, "ARG"):
        name, _, default = a.partition("=")
        defaults[name] = default
    return defaults


def test_base_image_is_an_official_slim_python_pinned_to_a_patch_version(
    instructions: list[Instruction],
) -> None:
    """Both stages use python:X.Y.Z-slim-<debian>, never a floating tag."""
    base = build_args(instructions)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", base)
    froms = ops(instructions, "FROM")
    assert len(froms) == 2, "multi-stage: builder + final"
    assert froms[0] == "${PYTHON_IMAGE} AS builder"
    assert froms[1] == "${PYTHON_IMAGE}"


def test_the_wheel_is_built_in_the_builder_and_only_the_venv_is_copied(
    instructions: list[Instruction],
) -> None:
    """The builder builds and installs the wheel; the final stage copies the venv, no build tools."""
    builder = " ".join(ops(instructions, "RUN", 0))
    assert "pip wheel" in builder
    assert "--no-deps" in builder
    assert "venv --without-pip" in builder
    last = final_stage(instructions)
    final_runs = " ".join(ops(instructions, "RUN", last))
    for tool in ("pip ", "apt-get", "gcc", "build-essential"):
        assert tool not in final_runs, f"final stage runs {tool.strip()}"
    assert ops(instructions, "COPY", last) == [
        "--from=builder /opt/forestreet-sidecar /opt/forestreet-sidecar"
    ]


def test_bytecode_is_compiled_at_build_time(instructions: list[Instruction]) -> None:
    """Bytecode is compiled in the image, so a read-only root filesystem costs no start-up time."""
    runs = " ".join(ops(instructions, "RUN"))
    assert "compileall" in runs
    assert "--invalidation-mode unchecked-hash" in runs
    env = " ".join(ops(instructions, "ENV", final_stage(instructions)))
    assert "PYTHONDONTWRITEBYTECODE=1" in env


def test_user_is_numeric_non_root_and_matches_the_chart(instructions: list[Instruction]) -> None:
    """USER is numeric UID:GID 10001:10001, the chart's runAsUser/runAsGroup."""
    (user,) = ops(instructions, "USER", final_stage(instructions))
    match = re.fullmatch(r"(\d+):(\d+)", user)
    assert match, f"USER {user} is not numeric UID:GID"
    uid, gid = int(match.group(1)), int(match.group(2))
    assert uid != 0
    assert gid != 0
    sc = yaml.safe_load(CHART_VALUES.read_text())["sidecar"]["securityContext"]
    assert (uid, gid) == (sc["runAsUser"], sc["runAsGroup"])


def test_entrypoint_and_cmd_are_exec_form(instructions: list[Instruction]) -> None:
    """ENTRYPOINT ["forestreet-sidecar"] and CMD ["run"]: signals reach the daemon, no shell."""
    last = final_stage(instructions)
    (entrypoint,) = ops(instructions, "ENTRYPOINT", last)
    (cmd,) = ops(instructions, "CMD", last)
    assert json.loads(entrypoint) == ["forestreet-sidecar"]
    assert json.loads(cmd) == ["run"]


def test_exposes_the_metrics_port_of_the_chart(instructions: list[Instruction]) -> None:
    """EXPOSE 9877, the chart's sidecar.port."""
    assert ops(instructions, "EXPOSE") == ["9877"]
    assert yaml.safe_load(CHART_VALUES.read_text())["sidecar"]["port"] == 9877


def test_token_directory_exists_and_belongs_to_the_user(instructions: list[Instruction]) -> None:
    """/var/run/forestreet is created owned by 10001, so a fresh volume there inherits it."""
    runs = " ".join(ops(instructions, "RUN", final_stage(instructions)))
    assert "install -d -o 10001 -g 10001 -m 0750 /var/run/forestreet" in runs


def test_oci_labels(instructions: list[Instruction]) -> None:
    """The standard OCI labels describe the image."""
    labels = " ".join(ops(instructions, "LABEL", final_stage(instructions)))
    for key in ("title", "description", "version", "revision", "licenses", "source", "created"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_exactly_what_the_builder_copies(
    instructions: list[Instruction],
) -> None:
    """The context is an allow-list, and everything the builder copies is on it."""
    patterns = [
        p for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources: set[str] = set()
    for copy in ops(instructions, "COPY", 0):
        sources.update(s.rstrip("/") for s in copy.split()[:-1])
    assert sources == allowed


def _package_version() -> str:
    text = (REPO / "sidecar" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert match
    return match.group(1)


def _tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_image_install_steps_give_a_working_command(tmp_path: Path) -> None:
    """The Dockerfile's steps (wheel, pip-less venv, compiled bytecode) give a runnable command
    that writes no bytecode at run time; needs PyPI for the build backend and dependencies."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "sidecar", src / "sidecar", ignore=shutil.ignore_patterns("__pycache__"))
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)

    def run(*argv: str | Path) -> None:
        subprocess.run([str(a) for a in argv], check=True, env=env, timeout=540)

    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", wheels, src)
    (wheel,) = wheels.glob("forestreet_sidecar-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    run(*pip, "--python", py, "install", "--no-cache-dir", "--no-compile", wheel)
    run(py, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", venv / "lib")
    assert not (venv / "bin" / "pip").exists(), "the image's venv carries no pip"

    before = _tree(venv)
    env.pop("PYTHONDONTWRITEBYTECODE")
    proc = subprocess.run(
        [str(venv / "bin" / "forestreet-sidecar"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _package_version() in proc.stdout + proc.stderr
    assert _tree(venv) == before, "running wrote files: bytecode was missing or stale"
