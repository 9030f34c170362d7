"""Static checks of container/Containerfile (no container engine runs here to build it),
and that it builds what `make image` builds (container/image.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from container import image

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "container" / "Containerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def build_args() -> dict[str, str]:
    return dict(
        rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest
    )


def test_multi_stage_onto_a_shell_less_base() -> None:
    build, runtime = stages()
    args = build_args()
    assert build[0][1] == "${PYTHON_IMAGE} AS build"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert runtime[0][1] == "${RUNTIME_IMAGE}"
    assert args["RUNTIME_IMAGE"].startswith("gcr.io/distroless/cc")
    # Nothing runs in the final stage: it has no shell.
    assert [w for w, _ in runtime if w == "RUN"] == []
    assert all(not rest.startswith('["/bin/sh') for _, rest in runtime)


def test_entrypoint_is_the_copied_binary() -> None:
    runtime = stages()[-1]
    (copy,) = [rest for w, rest in runtime if w == "COPY"]
    source, target = copy.removeprefix("--from=build ").split()
    (entrypoint,) = [json.loads(rest) for w, rest in runtime if w == "ENTRYPOINT"]
    assert entrypoint == [target.rstrip("/") + "/mirror"]
    assert source == "/out/mirror/"
    build_runs = " ".join(rest for w, rest in stages()[0] if w == "RUN")
    assert "MIRROR_ONEDIR=1" in build_runs and "--distpath /out" in build_runs
    assert "MIRROR_ONEDIR" in (ROOT / "container" / "binary" / "mirror.spec").read_text()
    (cmd,) = [json.loads(rest) for w, rest in runtime if w == "CMD"]
    assert cmd == ["registry"]


def test_copied_sources_exist_and_ports_are_the_defaults() -> None:
    for word, rest in stages()[0]:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _target = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
    exposed = [rest for w, rest in stages()[-1] if w == "EXPOSE"]
    assert exposed == ["5000/tcp 5001/udp 9090/tcp"]


def test_same_image_as_make_image() -> None:
    runtime = stages()[-1]
    (copy,) = [rest for w, rest in runtime if w == "COPY"]
    assert copy.split()[-1] == f"/{image.INSTALL_DIR}/"
    (entrypoint,) = [json.loads(rest) for w, rest in runtime if w == "ENTRYPOINT"]
    assert entrypoint == list(image.ENTRYPOINT)
    (cmd,) = [json.loads(rest) for w, rest in runtime if w == "CMD"]
    assert cmd == list(image.CMD)
    assert [rest for w, rest in runtime if w == "USER"] == [image.USER]
    assert [rest for w, rest in runtime if w == "EXPOSE"] == [" ".join(image.PORTS)]
