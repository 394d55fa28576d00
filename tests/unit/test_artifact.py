"""The one artifact loader (noria.artifact), function by function, against a hand-written corpus of
hostile files (tests/hostile_artifacts.py). The real server and trainer processes meet the same
corpus in tests/integration/test_server_refusal.py and test_trainer_hostile_champion.py."""

from __future__ import annotations

import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hostile_artifacts import (
    CODE_PAYLOADS,
    Case,
    build_corpus,
    lying_member,
    payload_is_live,
    root,
    skops_zip,
    zip_bomb,
)
from noria import artifact
from noria.artifact import ArtifactError, Limits, check_archive, load_verified, loads_verified, sha256_digest
from noria_server.reference_models import train_and_save


@pytest.fixture(scope="module")
def real_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    saved = train_and_save("mixed", str(tmp_path_factory.mktemp("real")), rows=300)
    return Path(saved.artifact_path).read_bytes()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, real_model: bytes) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("corpus"), real_model)


def test_every_hostile_artifact_is_refused_with_its_kind_quickly_and_cheaply(corpus: list[Case]) -> None:
    wrong = []
    for case in corpus:
        tracemalloc.start()
        started = time.monotonic()
        try:
            load_verified(case.uri, case.digest, case.store_root)
            wrong.append(f"{case.name}: loaded")
        except ArtifactError as exc:
            if exc.kind != case.kind or not all(w in str(exc) for w in case.words):
                wrong.append(f"{case.name}: {exc} (expected {case.kind} with {case.words})")
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        seconds = time.monotonic() - started
        if seconds > 15.0:  # a FIFO or a device that blocked would never get here at all
            wrong.append(f"{case.name}: took {seconds:.1f}s")
        if peak > 24 << 20:  # the bombs are ~1 MiB on disk; inflating them must cost no more than that
            wrong.append(f"{case.name}: Python allocations peaked at {peak >> 20} MiB")
        if case.marker is not None and case.marker.exists():
            wrong.append(f"{case.name}: the payload ran")
    assert not wrong, "\n".join(wrong)
    assert len(corpus) >= 25


@pytest.mark.parametrize("name", sorted(CODE_PAYLOADS))
def test_each_code_payload_runs_when_skops_trusts_what_it_reports(name: str, tmp_path: Path) -> None:
    """The refusals above are of real attacks: plain skops, trusting the names it reports (as the old
    prefix rule did), runs each payload."""
    marker = tmp_path / "ran"
    assert payload_is_live(skops_zip(root(CODE_PAYLOADS[name](marker))), marker), name


def test_payload_hidden_in_a_real_model_is_named_in_the_refusal(real_model: bytes, tmp_path: Path) -> None:
    from hostile_artifacts import exec_via_numpy_testing, inside_a_real_model

    marker = tmp_path / "ran"
    data = inside_a_real_model(real_model, exec_via_numpy_testing(marker))
    with pytest.raises(ArtifactError) as refused:
        loads_verified(data, sha256_digest(data))
    assert refused.value.kind == artifact.UNTRUSTED_TYPE
    assert "numpy.testing._private.utils.runstring (as ConstructorFromReduceNode)" in refused.value.message
    assert not marker.exists()
    assert payload_is_live(data, marker)


@pytest.mark.parametrize("kind", ["logistic", "hgb", "mixed", "regressor"])
def test_genuine_models_load_and_predict_the_same(kind: str, tmp_path: Path) -> None:
    saved = train_and_save(kind, str(tmp_path / "store/ml/m/v1"), rows=300)
    model = load_verified(saved.artifact_uri, saved.digest, f"file://{tmp_path}/store")
    assert list(model.feature_names_in_)
    data = Path(saved.artifact_path).read_bytes()
    assert type(loads_verified(data, saved.digest)) is type(model)


def test_zipfile_never_inflates_a_member_past_its_declared_size() -> None:
    """What skops does with a member whose declared size lies: it reads through zipfile, which stops
    at the central directory's size and then fails the CRC; the loader refuses before skops reads."""
    data = lying_member(inflated=64 << 20, declared=4096)
    with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open("lie.npy") as member:
        got = b""
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            while chunk := member.read(1 << 20):
                got += chunk
        assert len(got) <= 4096
    with pytest.raises(ArtifactError) as refused:
        check_archive(data)
    assert refused.value.kind == artifact.SUSPICIOUS_COMPRESSION


def test_the_expected_digest_must_be_sha256_before_anything_is_read(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as refused:
        load_verified(f"file://{tmp_path}/missing.skops", "md5:abc")
    assert refused.value.kind == artifact.INVALID_DIGEST


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as refused:
        load_verified(f"file://{tmp_path}/missing.skops", sha256_digest(b""))
    assert refused.value.kind == artifact.UNREADABLE and "no such file" in refused.value.message


def test_caps_are_settings(real_model: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(real_model)
    with pytest.raises(ArtifactError) as refused:
        load_verified(f"file://{path}", sha256_digest(real_model), limits=Limits(max_file_bytes=len(real_model) - 1))
    assert refused.value.kind == artifact.TOO_LARGE
    assert load_verified(f"file://{path}", sha256_digest(real_model), limits=Limits(max_file_bytes=len(real_model)))


def test_loader_kinds_that_call_what_the_file_names_are_never_trusted() -> None:
    from noria.trusted_types import TRUSTED_TYPES

    callers = {"ConstructorFromReduceNode", "PartialNode", "MethodNode", "OperatorFuncNode", "FunctionNode",
               "DefaultDictNode", "BytesNode", "BytearrayNode", "SparseMatrixNode", "CachedNode"}
    assert not callers & set(TRUSTED_TYPES)
    assert TRUSTED_TYPES["TypeNode"] <= {"builtins.str", "builtins.int", "builtins.float", "numpy.float64"}
    assert all("._testing" not in n and ".testing" not in n for names in TRUSTED_TYPES.values() for n in names)


def test_a_node_smuggled_anywhere_in_the_schema_is_audited() -> None:
    """Nodes under keys skops never reads for that loader are still checked: nothing hides."""
    hidden = {"__class__": "system", "__module__": "os", "__loader__": "FunctionNode"}
    schema = root({"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": "1",
                   "is_json": True, "extra": [{"deeper": hidden}]})
    data = skops_zip(schema)
    with pytest.raises(ArtifactError) as refused:
        loads_verified(data, sha256_digest(data))
    assert refused.value.kind == artifact.UNTRUSTED_TYPE and "os.system" in refused.value.message


def test_every_kind_has_its_own_exit_code() -> None:
    codes = artifact.EXIT_CODES
    assert len(set(codes.values())) == len(codes)
    assert artifact.EXIT_REFUSED_GENERIC not in codes.values()
    assert all(0 < code < 126 for code in codes.values())  # 126+ mean "not executable" / signals to a shell


def test_termination_message_is_the_contract_json_with_a_short_message() -> None:
    from noria.conditions import ARTIFACT_VERIFICATION_FAILED
    from noria_server.serve import termination_message

    text = termination_message(ArtifactError(artifact.UNTRUSTED_TYPE, "x" * 5000))
    message = json.loads(text)
    assert message["reason"] == ARTIFACT_VERIFICATION_FAILED == "ArtifactVerificationFailed"
    assert message["kind"] == "UntrustedType" and len(message["message"].encode()) <= 1024


def test_object_store_artifacts_get_the_same_caps_and_checks(real_model: bytes, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """s3:// objects are read through fsspec; fsspec's in-memory filesystem stands in for S3 here."""
    import fsspec

    monkeypatch.setattr(artifact, "REMOTE_SCHEMES", ("memory://",))
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/ml/churn/v1/model.skops", real_model)
    uri, digest = "memory://bucket/ml/churn/v1/model.skops", sha256_digest(real_model)
    assert list(load_verified(uri, digest).feature_names_in_)
    for limits, expected_digest, kind in ((Limits(max_file_bytes=100), digest, artifact.TOO_LARGE),
                                          (Limits(), sha256_digest(b"other"), artifact.DIGEST_MISMATCH)):
        with pytest.raises(ArtifactError) as refused:
            load_verified(uri, expected_digest, limits=limits)
        assert refused.value.kind == kind
    bomb = zip_bomb(400 << 20)
    fs.pipe("/bucket/ml/churn/v2/model.skops", bomb)
    with pytest.raises(ArtifactError) as refused:
        load_verified("memory://bucket/ml/churn/v2/model.skops", sha256_digest(bomb))
    assert refused.value.kind == artifact.SUSPICIOUS_COMPRESSION
