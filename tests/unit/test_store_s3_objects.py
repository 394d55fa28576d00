"""The store on s3:// against a real S3 API (moto's in-process server, unit tests only; the test
bed's SeaweedFS runs the integration tests): the trainer's atomic artifact write, the verified
streamed read the server and the operator use, profiles, datasets, new-data counting and the
prediction log. Every process reaches it as a pod does: through the AWS SDK's variables only."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import s3fs  # the s3 extra; both are dev dependencies, so a missing one fails here, never skips
from moto import server as moto_server
from noria import artifact, store
from noria.profile import Profile, build_profile
from noria.training import datasource
from noria_trainer import data as trainer_data
from noria_trainer.artifacts import OutputError, OutputLocation

BUCKET = "noria-store"
ROOT = f"s3://{BUCKET}/prod"
SECRET = "s3cr3t-never-in-a-message"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket, reached through AWS_ENDPOINT_URL / AWS_DEFAULT_REGION / key pair: exactly the
    variables noria.objectstore gives a pod."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "noria-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


def _model_bytes() -> bytes:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    return artifact.dumps_model(model)[0]


def _set(model: bytes) -> dict[str, bytes]:
    return {
        store.MODEL_FILE: model,
        store.PROFILE_FILE: b"{}",
        store.REPORT_FILE: b"{}",
        store.METADATA_FILE: json.dumps({"artifact": {"digest": artifact.sha256_digest(model)}}).encode(),
    }


def test_trainer_writes_the_set_under_its_final_keys_only_after_verifying_and_leaves_no_temporary_object(s3):
    out = OutputLocation.of(store.version_dir(ROOT, "ml", "churn", 1))
    assert not out.local
    out.preflight()
    model = _model_bytes()
    out.write_atomically(_set(model))
    s3.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.find(f"{BUCKET}/prod/ml/churn")) == sorted(
        store.ARTIFACT_FILES
    )
    assert s3.cat_file(f"{BUCKET}/prod/ml/churn/v1/{store.MODEL_FILE}") == model
    with pytest.raises(OutputError, match="exists already"):
        out.preflight()
    with pytest.raises(OutputError, match="exists already"):
        out.write_atomically(_set(model))


def test_a_set_killed_between_copies_is_not_complete_and_the_next_pod_clears_it(s3):
    out = OutputLocation.of(store.version_dir(ROOT, "ml", "churn", 2))
    # what a pod killed after two copies leaves: final files without metadata.json, and temporaries
    s3.pipe_file(f"{BUCKET}/prod/ml/churn/v2/{store.MODEL_FILE}", b"half")
    s3.pipe_file(f"{BUCKET}/prod/ml/churn/.v2.tmp-0123456789ab/{store.METADATA_FILE}", b"{}")
    assert not out.exists()
    out.preflight()
    s3.invalidate_cache()
    # no object of either is left (SeaweedFS keeps an empty folder entry, which is no file of a set)
    assert [p for p in s3.find(f"{BUCKET}/prod/ml/churn") if p.endswith(store.ARTIFACT_FILES)] == []
    out.write_atomically(_set(_model_bytes()))
    assert out.exists()


def test_the_server_loads_a_model_from_s3_only_with_its_digest(s3):
    model = _model_bytes()
    uri = f"{ROOT}/ml/churn/v1/{store.MODEL_FILE}"
    s3.pipe_file(uri, model)
    loaded = artifact.load_verified(uri, artifact.sha256_digest(model))
    assert loaded.predict([[3.0]]).tolist() == [1]
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.load_verified(uri, "sha256:" + "0" * 64)
    assert refused.value.kind == artifact.DIGEST_MISMATCH


def test_a_wrong_digest_is_refused_while_streaming_without_holding_the_object(s3, monkeypatch, tmp_path):
    """Measured with the S3 server in a process of its own (the in-process one's memory would count)."""
    import socket
    import subprocess
    import sys
    import tracemalloc

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        s3fs.S3FileSystem.clear_instance_cache()
        deadline = time.monotonic() + 30
        while True:
            try:
                s3fs.S3FileSystem().mkdir(BUCKET)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto.server did not start"
                time.sleep(0.2)
        uri = f"{ROOT}/ml/churn/v1/{store.MODEL_FILE}"
        s3fs.S3FileSystem().pipe_file(uri, b"x" * (48 << 20))
        tracemalloc.start()
        try:
            with pytest.raises(artifact.ArtifactError) as refused:
                artifact.read_verified(uri, "sha256:" + "0" * 64)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert refused.value.kind == artifact.DIGEST_MISMATCH
    assert peak < 12 << 20, f"{peak / 2**20:.1f} MiB held to refuse a 48 MiB object"


def test_an_object_over_the_cap_is_refused_from_its_size_before_reading(s3):
    uri = f"{ROOT}/ml/churn/v1/{store.MODEL_FILE}"
    s3.pipe_file(uri, b"x" * 2048)
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.read_verified(uri, "sha256:" + "0" * 64, limits=artifact.Limits(max_file_bytes=1024))
    assert refused.value.kind == artifact.TOO_LARGE


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        pytest.param(f"{ROOT}/ml/churn/v9/{store.MODEL_FILE}", artifact.UNREADABLE, id="missing"),
        pytest.param(f"{ROOT}/ml/../other/v1/{store.MODEL_FILE}", artifact.OUTSIDE_STORE, id="dot-dot"),
    ],
)
def test_a_missing_or_escaping_object_is_refused_with_its_kind(s3, uri, kind):
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.read_verified(uri, "sha256:" + "0" * 64)
    assert refused.value.kind == kind


def test_wrong_credentials_are_unreadable_and_the_secret_is_in_no_message(s3, monkeypatch):
    uri = f"{ROOT}/ml/churn/v1/{store.MODEL_FILE}"
    s3.pipe_file(uri, b"model")
    from moto import settings as moto_settings

    monkeypatch.setattr(
        moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0
    )  # from now on it checks keys: none known
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(artifact.ArtifactError) as refused:
        artifact.read_verified(uri, "sha256:" + "0" * 64)
    assert refused.value.kind == artifact.UNREADABLE
    assert SECRET not in str(refused.value) and refused.value.__cause__ is None


def test_the_operator_reads_a_profile_from_s3(s3):
    profile = build_profile({"x": [0.0, 1.0, 2.0]}, {"x": "numeric"})
    uri = f"{ROOT}/ml/churn/v1/{store.PROFILE_FILE}"
    s3.pipe_file(uri, profile.to_json().encode())
    assert Profile.load(uri).rows == 3
    with pytest.raises(ValueError, match="cannot read the profile"):
        Profile.load(f"{ROOT}/ml/churn/v7/{store.PROFILE_FILE}")


def test_datasets_are_listed_and_counted_on_s3(s3):
    source = f"{ROOT}/datasets/churn/"
    for day in ("2026-11-01", "2026-11-02"):
        s3.pipe_file(f"{source}{day}.csv", b"x,y\n1,0\n2,1\n")
    s3.pipe_file(f"{source}_SUCCESS", b"")
    _, files = trainer_data.list_data_files(source, "csv")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["2026-11-01.csv", "2026-11-02.csv"]
    _, globbed = trainer_data.list_data_files(f"{source}2026-11-0*.csv", "csv")
    assert len(globbed) == 2
    seen = datasource.observe(source, "csv")
    assert (seen.error, seen.rows) == (None, 4)
    s3.pipe_file(f"{source}2026-11-03.csv", b"x,y\n3,1\n")
    s3.invalidate_cache()
    again = datasource.observe(source, "csv")
    assert again.rows == 5 and again.fingerprint != seen.fingerprint


def test_the_prediction_log_writes_one_object_per_flush_on_s3(s3):
    from noria_server.predlog import JsonlLog

    def directory_for(day: dt.date) -> str:
        return store.predictions_dir(ROOT, "ml", "churn", "churn-v1", day)

    dropped: list[int] = []
    log = JsonlLog(directory_for, "churn-v1-abc", dropped.append, flush_seconds=0.2, retry_seconds=0.2)
    for i in range(50):
        log.offer(1, lambda i=i: json.dumps({"id": i}).encode() + b"\n")
    time.sleep(1.0)
    log.close()
    s3.invalidate_cache()
    objects = s3.find(directory_for(dt.datetime.now(dt.UTC).date()))
    lines = b"".join(s3.cat_file(o) for o in objects).splitlines()
    assert len(lines) == 50 and not dropped
    assert 1 <= len(objects) <= 5  # batched: never an object per request


def test_a_whole_training_run_reads_its_data_from_s3_and_writes_a_set_the_server_loads(
    s3, tmp_path, monkeypatch
):
    import io

    from noria_trainer.run import run_from_file
    from sklearn import datasets

    monkeypatch.setenv("NORIA_TRAINER_THREADS", "1")
    frame = datasets.load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    source = f"{ROOT}/ml/data/cancer/"
    half = len(frame) // 2
    s3.pipe_file(f"{source}part-0.csv", frame[:half].to_csv(index=False).encode())
    s3.pipe_file(f"{source}part-1.csv", frame[half:].to_csv(index=False).encode())
    output = store.version_dir(ROOT, "ml", "churn", 1)
    spec = {
        "runId": "churn-r1",
        "trigger": "manual",
        "namespace": "ml",
        "pipeline": "churn",
        "version": 1,
        "spec": {
            "data": {"source": source, "format": "csv"},
            "model": {
                "task": "classification",
                "estimator": "sklearn.linear_model.LogisticRegression",
                "target": "target",
                "params": {"max_iter": 50},
            },
            "evaluation": {"metric": "f1", "holdoutFraction": "0.25", "minScore": "0.80"},
        },
        "champion": None,
        "outputUri": output,
        "storeRoot": ROOT,
        "now": "2026-11-23T12:00:00+00:00",
    }
    spec_path, log = tmp_path / "spec.json", tmp_path / "termination.log"
    spec_path.write_text(json.dumps(spec))
    out = io.StringIO()
    code = run_from_file(str(spec_path), str(log), stream=out)
    summary = json.loads(log.read_text())
    assert code == 0, summary
    assert summary["artifactUri"] == f"{output}/{store.MODEL_FILE}" and summary["profileUri"].startswith(ROOT)
    s3.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.find(f"{BUCKET}/prod/ml/churn")) == sorted(
        store.ARTIFACT_FILES
    )
    model = artifact.load_verified(summary["artifactUri"], summary["digest"])
    features = frame.drop(columns=["target"])
    assert (model.predict(features) == frame["target"]).mean() > 0.9
    assert Profile.load(summary["profileUri"]).rows > 0
    from noria_server.model import (
        ServedModel,
    )  # what a model-server pod does at start, NORIA_STORE_ROOT=s3://...

    served = ServedModel.load(summary["artifactUri"], summary["digest"], summary["profileUri"], ROOT)
    assert served.profile is not None and served.is_classifier
    assert SECRET not in out.getvalue() + log.read_text()
    # a retried pod of the same run finds the set and reports it again instead of failing
    code_again = run_from_file(str(spec_path), str(tmp_path / "again.log"), stream=io.StringIO())
    assert code_again == 0 and json.loads((tmp_path / "again.log").read_text())["digest"] == summary["digest"]


def test_new_data_counting_on_s3_sees_a_same_size_rewrite_and_stays_bounded(s3, monkeypatch):
    source = f"{ROOT}/datasets/churn/"
    s3.pipe_file(f"{source}2026-11-01.csv", b"x,y\n1,0\n")
    first = datasource.observe(source, "csv")
    time.sleep(1.1)  # S3 times are whole seconds
    s3.pipe_file(f"{source}2026-11-01.csv", b"x,y\n2,1\n")
    s3.invalidate_cache()
    assert datasource.observe(source, "csv").fingerprint != first.fingerprint
    s3.pipe_file(f"{source}2026-11-02.csv", b"x,y\n3,1\n")
    s3.invalidate_cache()
    monkeypatch.setattr(datasource, "MAX_FILES", 1)
    bounded = datasource.observe(source, "csv")
    assert bounded.rows is None and "more than 1 csv files" in bounded.error


def test_the_trainer_joins_prediction_and_feedback_logs_read_from_s3(s3):
    base = f"{ROOT}/ml/churn"
    predictions = [
        {
            "id": f"r{i}",
            "ts": f"2026-11-01T00:00:0{i}Z",
            "model_version": "churn-v1",
            "features": {"x": float(i)},
            "prediction": 0,
        }
        for i in range(3)
    ]
    labels = [
        {"id": "r0", "ts": "2026-11-01T01:00:00Z", "label": 1},
        {"id": "r2", "ts": "2026-11-01T01:00:00Z", "label": 0},
    ]
    s3.pipe_file(
        f"{base}/predictions/churn-v1/2026-11-01/pod-a-000000.jsonl",
        b"".join(json.dumps(p).encode() + b"\n" for p in predictions),
    )
    s3.pipe_file(
        f"{base}/feedback/2026-11-01/pod-a-000000.jsonl",
        b"".join(json.dumps(label).encode() + b"\n" for label in labels),
    )
    merged = trainer_data.merge_feedback(ROOT, "ml", "churn", "y", ["x"], None)
    assert (merged.predictions_read, merged.labels_read) == (3, 2)
    assert sorted(merged.rows["y"].tolist()) == [0, 1] and sorted(merged.rows["x"].tolist()) == [0.0, 2.0]


def test_a_refused_listing_reaches_status_as_words_without_the_secret(s3, monkeypatch):
    from moto import settings as moto_settings

    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    s3fs.S3FileSystem.clear_instance_cache()
    seen = datasource.observe(f"{ROOT}/datasets/churn/", "csv")
    assert seen.rows is None and seen.error and SECRET not in seen.error
