"""The API models: valid examples parse, each invalid example fails on the field it names, and the
generated schemas are structural (what the API server demands of a CRD)."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from noria.api import (
    KINDS,
    ModelVersion,
    Rollout,
    TrainingPipeline,
    check_update,
    crdgen,
    decimal,
    field_errors,
    field_path,
    parse_duration,
    parse_window,
    validate_manifest,
)
from pydantic import ValidationError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VALID = sorted(p for p in EXAMPLES.glob("[0-9][0-9]-*/*.yaml"))
INVALID = sorted(p for p in (EXAMPLES / "invalid").glob("*.yaml") if not p.name.endswith(".original.yaml"))
ORIGINALS = sorted((EXAMPLES / "invalid").glob("*.original.yaml"))


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def directive(path: Path, name: str) -> str | None:
    """The text after ``# <name>:`` in a file's comments, if any."""
    match = re.search(rf"^# {re.escape(name)}: (.+)$", path.read_text(), re.MULTILINE)
    return match.group(1).strip() if match else None


def expectation(path: Path, name: str = "expect") -> tuple[str, str]:
    text = directive(path, name)
    assert text, f"{path.name} has no '# {name}: <field path> <message fragment>' line"
    field, _, fragment = text.partition(" ")
    return field, fragment


def test_there_are_enough_examples() -> None:
    assert len(VALID) >= 5
    assert len(INVALID) >= 12
    kinds = {doc["kind"] for p in VALID for doc in load(p)}
    assert {"TrainingPipeline", "ModelVersion", "Rollout"} <= kinds


@pytest.mark.parametrize("path", VALID + ORIGINALS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_valid_example_parses(path: Path) -> None:
    for doc in load(path):
        if not doc["apiVersion"].startswith("noria.dev/"):
            continue  # a folder may carry what the example needs besides (a PVC for the store)
        model = validate_manifest(doc)
        # and survives a round trip through the wire format unchanged in meaning
        again = validate_manifest(model.model_dump(mode="json", exclude_none=True))
        assert again == model


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_fails_on_the_field_it_names(path: Path) -> None:
    field, fragment = expectation(path, "model-expect") if directive(path, "model-expect") else expectation(path)
    (doc,) = load(path)
    original = directive(path, "original")
    if original:
        (old,) = load(path.parent / original)
        validate_manifest(old)
        validate_manifest(doc)  # each is fine on its own: the change is what is refused
        with pytest.raises(ValueError) as caught:
            check_update(old, doc)
        assert str(caught.value).startswith(field + ":") and fragment in str(caught.value)
        return
    with pytest.raises(ValidationError) as caught:
        validate_manifest(doc)
    errors = [(field_path(e["loc"]), e["msg"]) for e in caught.value.errors()]
    assert any(p == field and fragment in msg for p, msg in errors), (
        f"expected an error on {field} containing {fragment!r}, got {errors}"
    )


def test_every_invalid_example_declares_what_the_api_server_says() -> None:
    for path in INVALID:
        field, fragment = expectation(path)
        assert field.startswith(("spec", "metadata.name")) and fragment, path.name


# --- value types ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", dt.timedelta(seconds=30)),
        ("5m", dt.timedelta(minutes=5)),
        ("1h30m", dt.timedelta(hours=1, minutes=30)),
        ("180d", dt.timedelta(days=180)),
        ("250ms", dt.timedelta(milliseconds=250)),
        ("2w", dt.timedelta(weeks=2)),
    ],
)
def test_parse_duration(text: str, expected: dt.timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "1 hour", "1.5h", "-5m", "5M", "h"])
def test_parse_duration_refuses_malformed_text_and_names_it(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_duration(text)


def test_parse_window() -> None:
    assert parse_window("50000 rows") == ("rows", 50000)
    assert parse_window("180d") == ("duration", "180d")
    with pytest.raises(ValueError, match="row count"):
        parse_window("0 rows")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.05", Decimal("0.05")),
        (2, Decimal(2)),
        ("-1.5", Decimal("-1.5")),
        ("250ms", Decimal("0.25")),
        ("1.23457e+06", Decimal("1234570")),
    ],
)
def test_decimal(value: int | str, expected: Decimal) -> None:
    assert decimal(value) == expected


@pytest.mark.parametrize("value", [0.05, True, "1e", "abc", "nan", "inf", "0.5.1"])
def test_decimal_refuses_floats_and_junk(value: Any) -> None:
    with pytest.raises(ValueError, match="decimal string"):
        decimal(value)


def test_float_threshold_is_refused_but_integer_and_string_are_accepted() -> None:
    base = {
        "model": {"task": "classification", "estimator": "sklearn.linear_model.LogisticRegression", "target": "y"},
        "data": {"source": "file:///d/"},
    }
    for ok in ("0.7", 1, 0):
        spec = TrainingPipeline.model_validate({"spec": {**base, "evaluation": {"minScore": ok}}}).spec
        assert spec.evaluation and spec.evaluation.min_score == ok
    with pytest.raises(ValidationError):
        TrainingPipeline.model_validate({"spec": {**base, "evaluation": {"minScore": 0.7}}})
    with pytest.raises(ValidationError):
        TrainingPipeline.model_validate({"spec": {**base, "evaluation": {"minScore": True}}})


def test_defaults_and_helpers() -> None:
    (doc,) = load(EXAMPLES / "01-training-pipeline" / "regression-minimal.yaml")
    tp = TrainingPipeline.model_validate(doc)
    assert tp.spec.evaluation_metric() == "rmse"
    assert tp.spec.approval == "automatic" and tp.spec.history_limit == 10
    (doc,) = load(EXAMPLES / "05-rollout-shadow" / "rollout.yaml")
    assert Rollout.model_validate(doc).spec.strategy.name == "shadow"
    (doc,) = load(EXAMPLES / "03-rollout-canary" / "rollout.yaml")
    assert Rollout.model_validate(doc).spec.strategy.name == "canary"


def test_status_keeps_unknown_keys_and_parses_what_the_operator_writes() -> None:
    (doc,) = load(EXAMPLES / "02-model-version-import" / "modelversion.yaml")
    doc["status"] = {
        "stage": "Production",
        "traffic": 100,
        "metric": "f1=0.81",
        "history": [{"stage": "Canary", "at": "2026-11-01T12:00:00Z", "reason": "new", "by": "rollout/churn"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "ok"}],
        "somethingNewer": {"kept": True},
    }
    mv = ModelVersion.model_validate(doc)
    assert mv.status and mv.status.stage == "Production"
    assert mv.model_dump(mode="json")["status"]["somethingNewer"] == {"kept": True}
    doc["status"]["stage"] = "Serving"
    with pytest.raises(ValidationError, match="stage"):
        ModelVersion.model_validate(doc)


# --- the generated schemas are structural ---------------------------------------------------------
def walk(node: Any, path: str = "") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_generated_schema_is_structural_and_documented(kind: Any) -> None:
    schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "$defs" not in text and "null" not in text
    for path, node in walk(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        ), f"{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: anyOf only for int-or-string"
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
        assert node.get("additionalProperties") is not False, path
        assert "title" not in node, path
        if path.startswith((".spec", ".status")) and path.count(".") >= 2 and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path} has no description"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"], f"{path}: CEL rule without a message"
            if ".matches(" in rule["rule"]:
                # a root rule matches metadata.name, bounded by the declared metadata.name maxLength
                bounded = node if path else node["properties"]["metadata"]["properties"]["name"]
                assert bounded.get("maxLength"), f"{path}: a regex over an unbounded string blows the CEL cost budget"
        if node.get("type") == "array":
            assert node.get("maxItems"), f"{path}: lists need maxItems to bound CEL cost"


def test_free_form_fields_are_only_where_intended() -> None:
    free = []
    for kind in KINDS:
        schema = crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        free += [f"{kind.kind}{p}" for p, n in walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
    # estimator params and the values of a search space are the estimator's business
    assert sorted(free) == ["TrainingPipeline.model.params", "TrainingPipeline.tuning.space{}[]"]


# --- the offline validator ---------------------------------------------------------------------
def test_field_errors_spell_paths_like_the_api_server() -> None:
    (doc,) = load(EXAMPLES / "invalid" / "rollout-weight-150.yaml")
    assert field_errors(doc) == [
        ("spec.strategy.canary.steps[1].setWeight", "Input should be less than or equal to 100")
    ]
    assert field_errors({"apiVersion": "v1", "kind": "Pod"})[0][0] == "apiVersion"
    (valid,) = load(EXAMPLES / "05-rollout-shadow" / "rollout.yaml")
    assert field_errors(valid) == []


def test_validate_command_reports_each_invalid_file_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    from noria.api import validate

    assert validate.main([str(EXAMPLES / "03-rollout-canary"), str(EXAMPLES / "90-closed-loop")]) == 0
    assert validate.main([str(EXAMPLES / "invalid")]) == 1
    out = capsys.readouterr()
    assert "rollout-shadow-service.yaml[0] Rollout/shadow-service: spec: traffic provider service" in out.out
    assert f"{len(INVALID) + len(ORIGINALS)} Noria manifest(s) checked, {len(INVALID) - 1} invalid" in out.err


# --- cron fields and object names (the same rules as the CRD's CEL; the API server runs those in
# tests/integration/test_api_validator_agreement.py) -----------------------------------------------
@pytest.mark.parametrize(("schedule", "problem"), [
    ("0 2 * * 0", None),
    ("*/15 0-6,22 1-7 jan-mar mon-fri", None),
    ("0 0 L * *", None),
    ("0 0 ? * 1#2", None),
    ("0 0 29 2 *", None),  # leap years have it
    ("0 2 31 2 1", None),  # with a weekday set, cron fires on Mondays of February
    ("0 0 30 2/12 *", None),  # never comes, but only the operator's InvalidSpec can tell
    ("@daily", None),
    ("0 2 * *", "5 fields"),
    ("60 * * * *", "minute (1st field) must be 0-59"),
    ("*/0 * * * *", "minute (1st field)"),
    ("0 24 * * *", "hour (2nd field) must be 0-23"),
    ("0 0 0 * *", "day of month (3rd field) must be 1-31"),
    ("0 0 1 13 *", "month (4th field) must be 1-12"),
    ("0 0 * * 8", "day of week (5th field) must be 0-7"),
    ("0 2 31 2 *", "a date that never comes"),
    ("0 2 30,31 feb ?", "a date that never comes"),
    ("0 0 31 4,6,9 *", "a date that never comes"),
])
def test_cron_rules(schedule: str, problem: str | None) -> None:
    from noria.api.training_pipeline import cron_problems

    problems = cron_problems(schedule)
    if problem is None:
        assert problems == []
        from croniter import croniter

        assert croniter.is_valid(schedule), "a schedule the API accepts must be one the operator can read"
    else:
        assert any(problem in p for p in problems), problems


def test_every_cron_field_out_of_range_is_named() -> None:
    from noria.api.training_pipeline import cron_problems

    problems = cron_problems("99 99 99 99 99")
    assert [p.split(" (")[0] for p in problems] == ["minute", "hour", "day of month", "month", "day of week"]


@pytest.mark.parametrize(("kind", "name", "spec", "ok"), [
    ("TrainingPipeline", "p" * 55, {}, True),
    ("TrainingPipeline", "p" * 56, {}, False),
    ("TrainingPipeline", "churn.eu", {}, False),
    ("TrainingPipeline", "9churn", {}, False),
    ("Rollout", "r" * 27, {"source": {"pipeline": "p" * 27}}, True),
    ("Rollout", "r" * 28, {"source": {"pipeline": "p" * 27}}, False),
    ("Rollout", "r" * 31, {"source": {"modelVersion": "m" * 31}}, True),
    ("Rollout", "r" * 32, {"source": {"modelVersion": "m" * 31}}, False),
    ("Rollout", "r" * 56, {"source": {"modelVersion": "m"}}, False),
    ("ModelVersion", "churn-v7", {"pipeline": "churn", "version": 7}, True),
    ("ModelVersion", "churn-v07", {"pipeline": "churn", "version": 7}, False),
    ("ModelVersion", "churn-latest", {"pipeline": "churn", "version": 7}, False),
])
def test_name_rules(kind: str, name: str, spec: dict[str, Any], ok: bool) -> None:
    """The longest derived name fits: <pipeline>-r999999, <rollout>-<pipeline>-v999999 and
    <rollout>-<modelVersion> are at most 63 characters exactly at the limits."""
    from noria.api.naming import name_problems
    from noria.api.resources import kind_of

    manifest = {"apiVersion": "noria.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    problems = name_problems(kind_of(manifest).name_rules, manifest)
    assert (problems == []) == ok, problems
    if ok and kind == "Rollout":
        source = spec["source"]
        version = f"{source['pipeline']}-v999999" if "pipeline" in source else source["modelVersion"]
        assert len(f"{name}-{version}") <= 63
    if ok and kind == "TrainingPipeline":
        assert len(f"{name}-r999999") <= 63
