"""The three images without a Docker engine: each Dockerfile pins its base, installs only its own
extra through constraints.txt, runs as a numeric non-root user, and starts a module that exists.
The operator image's user is the one the chart's Deployment runs as."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = {  # Dockerfile -> (extra, module its ENTRYPOINT runs)
    "operator/Dockerfile": ("operator,s3", "noria"),  # s3: every image reaches an s3:// store
    "trainer_image/Dockerfile": ("trainer,dask,s3", "noria_trainer"),
    "trainer_image/Dockerfile.feast": ("trainer,feast", "noria_trainer"),  # constraints-feast.txt: pandas<3
    "server_image/Dockerfile": ("server,s3", "noria_server"),
}


def instructions(path: str) -> list[tuple[str, str]]:
    text = (ROOT / path).read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", sorted(IMAGES))
def test_image_is_pinned_minimal_and_non_root(path: str) -> None:
    extra, module = IMAGES[path]
    steps = instructions(path)
    for base in (args for op, args in steps if op == "FROM"):
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+( AS \w+)?", base), f"{path}: unpinned base {base!r}"
    installs = [args for op, args in steps if op == "RUN" and "pip install" in args]
    assert installs == [f'pip install -c /constraints.txt "$(ls /wheels/noria-*.whl)[{extra}]" '
                        "&& rm -rf /wheels /constraints.txt"], f"{path}: {installs}"
    user = [args for op, args in steps if op == "USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, f"{path}: USER {user}"
    entrypoint = [args for op, args in steps if op == "ENTRYPOINT"][-1]
    assert entrypoint == f'["python", "-m", "{module}"]'
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_constraints_pin_every_line_to_one_version() -> None:
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+!\-]+", line) for line in lines), lines


def test_the_chart_runs_the_operator_as_the_images_user() -> None:
    uid = [args for op, args in instructions("operator/Dockerfile") if op == "USER"][-1].split(":")[0]
    values = yaml.safe_load((ROOT / "charts/noria/values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)  # the Deployment's securityContext
    assert values["image"]["repository"].endswith("noria-operator")
