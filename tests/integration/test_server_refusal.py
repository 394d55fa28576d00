"""A model server given a bad artifact refuses it, never turns ready, says why, and exits non-zero.

Each case is a real ``python -m noria_server serve`` process over real HTTP.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import pytest
from noria.artifact import dumps_model, sha256_digest
from noria_server import launch
from noria_server.reference_models import train_and_save
from noria_server.serve import EXIT_REFUSED


class _RunsCommandWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _expect_refused(artifact: Path, digest: str, tmp_path: Path, reason: str) -> str:
    proc = launch.serve("file://" + str(artifact), digest, "m", "m-v1", str(tmp_path),
                        extra=["--failure-exit-seconds", "4"])
    try:
        saw_not_ready = False
        deadline = time.monotonic() + 300
        while proc.proc is not None and proc.proc.poll() is None and time.monotonic() < deadline:
            try:
                status, body = launch.get(proc.url + "/v2/health/ready", timeout=1)
            except OSError:
                time.sleep(0.1)
                continue
            assert status == 503, f"became ready on a refused artifact: {body!r}"
            answer = json.loads(body)
            if answer["state"] == "failed" and not saw_not_ready:
                saw_not_ready = True
                assert reason in answer["reason"], answer
                infer_status, _ = _post_infer(proc.url)
                assert infer_status == 503
            time.sleep(0.1)
        assert proc.proc is not None and proc.proc.wait(30) == EXIT_REFUSED
        assert saw_not_ready
        assert reason in proc.log()
        return proc.log()
    finally:
        proc.stop()


def _post_infer(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/v2/models/m/infer", data=b'{"inputs": []}', method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return train_and_save("logistic", str(tmp_path_factory.mktemp("good")), rows=300)


def test_tampered_artifact_is_refused(good_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(Path(good_model.artifact_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / "model.skops"
    tampered.write_bytes(bytes(data))
    _expect_refused(tampered, good_model.digest, tmp_path, "digest mismatch")


def test_wrong_digest_is_refused(good_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _expect_refused(Path(good_model.artifact_path), sha256_digest(b"another model"), tmp_path, "digest mismatch")
    _expect_refused(Path(good_model.artifact_path), "md5:abc", tmp_path, "is not of the form sha256")


def test_pickle_renamed_skops_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCommandWhenUnpickled(str(marker)))
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(payload)
    # The digest matches: the attacker controls the ModelVersion too; skops must still refuse it.
    _expect_refused(artifact, sha256_digest(payload), tmp_path, "not a skops artifact")
    assert not marker.exists()


def test_untrusted_type_is_refused(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"])
    model = Pipeline([("sneaky", FunctionTransformer(os.system)), ("lr", LogisticRegression())])
    model.steps[0] = ("sneaky", FunctionTransformer(np.negative))
    model.fit(frame, (frame["a"] > 0).astype(int))
    model.steps[0] = ("sneaky", FunctionTransformer(os.system))  # what a tampered trainer would ship
    data, untrusted = dumps_model(model)
    assert any("system" in t for t in untrusted)
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(data)
    log = _expect_refused(artifact, sha256_digest(data), tmp_path, "untrusted types")
    assert "system" in log


def test_model_without_feature_names_is_refused(tmp_path: Path) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    data, _ = dumps_model(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)))
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(data)
    _expect_refused(artifact, sha256_digest(data), tmp_path, "feature_names_in_")
