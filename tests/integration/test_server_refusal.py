"""A model server given a hostile or bad artifact refuses it: it never turns ready, says why (readiness
answer, log, termination message), runs none of the file's code, stays within a memory bound, and
exits with the refusal kind's code.

Each case is a real ``python -m noria_server serve`` process over real HTTP, given one artifact of
the hand-written corpus (tests/hostile_artifacts.py). Peak RSS is the child's VmHWM read from
/proc while it waits, refused, to exit; the figures are printed (``pytest -s``) and written to
``$NORIA_RSS_REPORT`` when set.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hostile_artifacts import Case, build_corpus
from noria.artifact import EXIT_CODES, UNUSABLE_MODEL, dumps_model, sha256_digest
from noria.conditions import ARTIFACT_VERIFICATION_FAILED
from noria_server import launch
from noria_server.reference_models import train_and_save

# The bound a refusal must stay under, whatever the artifact: the refusing server's own footprint
# (Python, numpy, the HTTP layer: about 50 MB here; scikit-learn and skops are imported only once a
# file has passed every check) plus the loader's worst case for a refused file (a 1 MiB read buffer,
# the ~1 MiB file, one 1 MiB inflate chunk, a bounded schema.json). Measured figures per attack are
# in docs/security/artifacts.md; before this bound existed a 1 GiB zip member took the server to 2-3 GB.
PEAK_RSS_BOUND_MB = 128


def _peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _post_infer(url: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/v2/models/m/infer", data=b'{"inputs": []}', method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _expect_refused(uri: str, digest: str, tmp_path: Path, kind: str, words: tuple[str, ...] = (),
                    store_root: str | None = None, name: str = "case") -> dict:
    """Run the server on ``uri``; assert the refusal; return what was observed."""
    termination = tmp_path / f"{name}.termination-log"
    termination.write_text("")
    extra = ["--failure-exit-seconds", "1.5", "--termination-log", str(termination)]
    if store_root:
        extra += ["--store-root", store_root]
    proc = launch.serve(uri, digest, "m", "m-v1", str(tmp_path), extra=extra)
    assert proc.proc is not None
    peak = 0.0
    try:
        saw_failed = False
        deadline = time.monotonic() + 240
        while proc.proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, _peak_rss_mb(proc.proc.pid) or 0.0)
            try:
                status, body = launch.get(proc.url + "/v2/health/ready", timeout=1)
            except OSError:
                time.sleep(0.05)
                continue
            assert status == 503, f"{name}: became ready on a refused artifact: {body!r}"
            answer = json.loads(body)
            if answer["state"] == "failed" and not saw_failed:
                saw_failed = True
                assert kind in answer["reason"] and all(w in answer["reason"] for w in words), (name, answer)
                assert _post_infer(proc.url) == 503
            time.sleep(0.05)
        code = proc.proc.wait(30)
        log = proc.log()
        assert saw_failed, (name, log[-2000:])
        assert code == EXIT_CODES[kind], (name, code, log[-2000:])
        assert kind in log
        message = json.loads(termination.read_text())
        assert message["reason"] == ARTIFACT_VERIFICATION_FAILED and message["kind"] == kind, message
        assert len(message["message"].encode()) <= 1024 and all(w in message["message"] for w in words)
        return {"name": name, "kind": kind, "exit": code, "peak_rss_mb": round(peak, 1)}
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def good_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return train_and_save("logistic", str(tmp_path_factory.mktemp("good")), rows=300)


def test_every_hostile_artifact_is_refused_by_the_real_server_within_the_memory_bound(
        good_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cases = build_corpus(tmp_path, Path(good_model.artifact_path).read_bytes())

    def run(case: Case) -> dict:
        return _expect_refused(case.uri, case.digest, tmp_path, case.kind, case.words, case.store_root, case.name)

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(run, cases))
    for case in cases:
        assert case.marker is None or not case.marker.exists(), f"{case.name}: the payload ran"
    table = "\n".join(f"{r['name']:<45} {r['kind']:<22} exit {r['exit']:<3} peak RSS {r['peak_rss_mb']:7.1f} MB"
                      for r in results)
    print("\n" + table)
    if os.environ.get("NORIA_RSS_REPORT"):
        Path(os.environ["NORIA_RSS_REPORT"]).write_text(json.dumps(results, indent=1))
    over = [r for r in results if r["peak_rss_mb"] > PEAK_RSS_BOUND_MB]
    assert not over, over
    assert all(r["peak_rss_mb"] > 0 for r in results)


def test_tampered_artifact_is_refused(good_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(Path(good_model.artifact_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / "model.skops"
    tampered.write_bytes(bytes(data))
    _expect_refused("file://" + str(tampered), good_model.digest, tmp_path, "DigestMismatch", ("digest mismatch",))


def test_malformed_digest_is_refused(good_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _expect_refused(good_model.artifact_uri, "md5:abc", tmp_path, "InvalidDigest", ("is not of the form sha256",))


def test_function_transformer_naming_os_system_is_refused(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(50, 2)), columns=["a", "b"])
    model = Pipeline([("sneaky", FunctionTransformer(np.negative)), ("lr", LogisticRegression())])
    model.fit(frame, (frame["a"] > 0).astype(int))
    model.steps[0] = ("sneaky", FunctionTransformer(os.system))  # what a tampered trainer would ship
    data, untrusted = dumps_model(model)
    assert any("system" in t for t in untrusted)
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(data)
    _expect_refused("file://" + str(artifact), sha256_digest(data), tmp_path, "UntrustedType",
                    ("posix.system (as TypeNode)",))


def test_model_without_feature_names_is_refused(tmp_path: Path) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 3))
    data, _ = dumps_model(LogisticRegression().fit(x, (x[:, 0] > 0).astype(int)))
    artifact = tmp_path / "model.skops"
    artifact.write_bytes(data)
    _expect_refused("file://" + str(artifact), sha256_digest(data), tmp_path, UNUSABLE_MODEL, ("feature_names_in_",))


def test_genuine_model_inside_the_store_is_served(tmp_path: Path) -> None:
    """The same checks let the trainer's kind of model through, with the store root set."""
    saved = train_and_save("mixed", str(tmp_path / "store/ml/m/v1"), rows=300)
    proc = launch.serve(saved.artifact_uri, saved.digest, "m", "m-v1", str(tmp_path), profile_uri=saved.profile_uri,
                        extra=["--store-root", f"file://{tmp_path}/store"])
    try:
        proc.wait_ready(120)
        assert proc.proc is not None
        print(f"\ngenuine model served, peak RSS {_peak_rss_mb(proc.proc.pid):.1f} MB")
    finally:
        assert proc.stop() == 0


def test_crafted_tree_index_is_refused_cleanly_instead_of_crashing_the_warm_up(tmp_path: Path) -> None:
    """Trusted types, crafted contents: a decision tree whose root points outside its node table.
    Unchecked, the server's warm-up prediction would kill it (no reason, no termination message);
    the loader's index check refuses it as Malformed. This refusal happens after the model is built,
    so its memory is a loaded model's, bounded by the footprint of a served one."""
    import numpy as np
    import pandas as pd
    from sklearn.tree import DecisionTreeClassifier

    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)), columns=["a", "b", "c"])
    model = DecisionTreeClassifier().fit(frame, (frame["a"] > 0).astype(int))
    state = model.tree_.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = state["nodes"]["right_child"][0] = 1_000_000_000
    model.tree_.__setstate__(state)
    data, _ = dumps_model(model)
    artifact = tmp_path / "store/ml/m/v1/model.skops"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(data)
    result = _expect_refused("file://" + str(artifact), sha256_digest(data), tmp_path, "Malformed",
                             ("child index",), f"file://{tmp_path}/store", "crafted-tree")
    print(f"\ncrafted tree refused, peak RSS {result['peak_rss_mb']} MB")
    assert result["peak_rss_mb"] < 400
