"""What a container runs when its pod leaves it to the image, as the kubelet decides it.

A container's ``command`` replaces the image's ENTRYPOINT and its ``args`` replace the image's
CMD; with ``args`` alone the image's ENTRYPOINT runs with them, with neither the image runs
ENTRYPOINT + CMD (Kubernetes "Define a command and arguments for a container"). The agent has no
images, so it reads ENTRYPOINT and CMD where they are written: the repository's own Dockerfiles.
:data:`IMAGE_DOCKERFILES` is the one table from an image's repository name (the last path segment,
without registry, tag or digest, so ``ghcr.io/noria-dev/noria-operator:0.1.0`` and
``noria-operator:test`` are the same image) to the Dockerfile that builds it. Pure functions except
:func:`image_config`, which reads (and caches) a Dockerfile.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from noria_testbed.binaries import REPO_ROOT
from noria_testbed.podspec import PodSpecError

# Image repository name -> its Dockerfile, relative to the repository root.
IMAGE_DOCKERFILES = {
    "noria-operator": "operator/Dockerfile",
    "noria-trainer": "trainer_image/Dockerfile",
    "noria-server": "server_image/Dockerfile",
    "noria-trainer-feast": "trainer_image/Dockerfile.feast",
}
# Images whose ``python`` is not the agent's own interpreter: image repository name -> the venv
# interpreter (relative to the repository root) holding what the image installs. The Feast trainer
# needs pandas<3, which the agent's venv cannot hold (docs/training-feast.md; make feast-venv).
IMAGE_INTERPRETERS = {
    "noria-trainer-feast": ".venv-feast/bin/python",
}


@dataclass(frozen=True)
class ImageConfig:
    """The ENTRYPOINT and CMD of an image's final stage, each as an exec-form argv."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def repository_name(image: str) -> str:
    """``registry/path/name:tag@digest`` -> ``name``.

    >>> repository_name("ghcr.io/noria-dev/noria-server:0.1.0@sha256:ab")
    'noria-server'
    >>> repository_name("localhost:5000/noria-trainer")
    'noria-trainer'
    """
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _instruction_argv(value: str) -> tuple[str, ...]:
    """An ENTRYPOINT/CMD value: the JSON exec form as written, the shell form under ``/bin/sh -c``."""
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(part, str) for part in parsed):
            return tuple(parsed)
    return ("/bin/sh", "-c", value)


def parse_dockerfile(text: str, *, source: str = "Dockerfile") -> ImageConfig:
    """ENTRYPOINT and CMD of the final stage. As Docker does, an ENTRYPOINT resets a CMD inherited
    from the base image, so a stage that sets ENTRYPOINT but no CMD has an empty CMD. A final stage
    that sets neither inherits both from its base image, which this agent cannot read: refused.

    >>> parse_dockerfile('FROM a AS b\\nCMD ["x"]\\nFROM python\\nENTRYPOINT ["python", "-m", "m"]\\n')
    ImageConfig(entrypoint=('python', '-m', 'm'), cmd=())
    """
    logical = text.replace("\\\n", " ")
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    for line in logical.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, value = stripped.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            entrypoint = cmd = None  # a new stage starts from its base image's settings
        elif keyword == "ENTRYPOINT":
            entrypoint = _instruction_argv(value)
        elif keyword == "CMD":
            cmd = _instruction_argv(value)
    if entrypoint is None and cmd is None:
        raise PodSpecError(f"{source}: its final stage sets neither ENTRYPOINT nor CMD (they would come from the "
                           "base image, which the node agent cannot read)")
    return ImageConfig(entrypoint or (), cmd or ())


@functools.cache
def image_config(image: str, repo_root: Path = REPO_ROOT) -> ImageConfig | None:
    """The image's ENTRYPOINT and CMD from its Dockerfile, or None for an image not in the table."""
    relative = IMAGE_DOCKERFILES.get(repository_name(image))
    if relative is None:
        return None
    return parse_dockerfile((repo_root / relative).read_text(), source=relative)


def image_python(image: str, default: str, repo_root: Path = REPO_ROOT) -> str:
    """The interpreter ``python`` means in a container of ``image``: its venv's, or ``default``.

    >>> image_python("noria-trainer:1", "/venv/bin/python")
    '/venv/bin/python'
    """
    relative = IMAGE_INTERPRETERS.get(repository_name(image))
    if relative is None:
        return default
    interpreter = repo_root / relative
    if not interpreter.exists():
        raise PodSpecError(f"image {image!r} runs on {relative}, which is missing: run `make feast-venv`")
    return str(interpreter)


def container_argv(container_name: str, image: str, command: list[str], args: list[str],
                   config: ImageConfig | None) -> tuple[list[str], list[str]]:
    """(the argv's head, its tail) as the kubelet combines the container's ``command``/``args``
    with the image's ENTRYPOINT/CMD. The head is what comes from the image, returned apart so the
    caller can expand ``$(VAR)`` in the container's own strings only (as the kubelet does).

    >>> container_argv("c", "noria-trainer:1", [], [], ImageConfig(("python", "-m", "t"), ("run",)))
    (['python', '-m', 't', 'run'], [])
    >>> container_argv("c", "noria-trainer:1", [], ["--x"], ImageConfig(("python", "-m", "t"), ("run",)))
    (['python', '-m', 't'], ['--x'])
    >>> container_argv("c", "any", ["sh"], ["-c", "true"], None)
    ([], ['sh', '-c', 'true'])
    """
    if command:
        return [], [*command, *args]  # the image's ENTRYPOINT and CMD are both replaced
    if config is None:
        known = ", ".join(sorted(IMAGE_DOCKERFILES))
        raise PodSpecError(f"container {container_name!r}: no command, and the node agent does not know the "
                           f"entrypoint of image {image!r} (it reads those of {known} from their Dockerfiles); "
                           "give the container a command")
    if args:
        return list(config.entrypoint), list(args)
    head = [*config.entrypoint, *config.cmd]
    if not head:
        raise PodSpecError(f"container {container_name!r}: image {image!r} has an empty ENTRYPOINT and CMD; "
                           "give the container a command")
    return head, []
