"""The test bed's node agent runs the noria-trainer-feast image on the Feast venv's interpreter
(images.IMAGE_INTERPRETERS), every other image on its own: ``python`` means what the image holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from noria_testbed.node_agent.images import IMAGE_INTERPRETERS, image_python
from noria_testbed.node_agent.launch import launch_for
from noria_testbed.podspec import PodSpecError, Sources


def launch(tmp_path: Path, image: str):
    pod = {"metadata": {"name": "p", "namespace": "ml", "uid": "u-1"}, "spec": {"containers": []}}
    return launch_for(
        pod,
        {"name": "trainer", "image": image},
        sources=Sources(),
        volume_dirs={},
        pod_dir=tmp_path,
        pod_ip="127.9.0.2",
        python=sys.executable,
        run_id="r",
        credentials=None,
    )


def test_the_feast_trainer_image_runs_on_the_feast_venv(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    interpreter = root / IMAGE_INTERPRETERS["noria-trainer-feast"]
    if not interpreter.exists():
        pytest.skip("no .venv-feast here (make feast-venv); the missing case is tested below")
    started = launch(tmp_path, "ghcr.io/noria-dev/noria-trainer-feast:0.1.0")
    assert started.argv[:3] == [str(interpreter), "-m", "noria_trainer"]
    assert started.env["PATH"].split(":")[0] == str(interpreter.parent)
    assert launch(tmp_path, "noria-trainer:test").argv[0] == sys.executable


def test_a_missing_venv_is_a_pod_error_naming_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(PodSpecError, match="make feast-venv"):
        image_python("noria-trainer-feast:1", sys.executable, repo_root=tmp_path)
    assert image_python("noria-server:1", "/x/python", repo_root=tmp_path) == "/x/python"
