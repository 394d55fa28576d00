"""The XGBoost envelope (noria.xgboost_artifact) through the one loader (noria.artifact) and the
server's ServedModel: a real booster round-trips to the same predictions, and a tampered file is
refused before XGBoost parses it, with a kind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_type_hints

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from noria import xgboost_artifact
from noria.api.model_version import Artifact
from noria.artifact import (
    MALFORMED,
    UNTRUSTED_TYPE,
    ArtifactError,
    load_verified,
    loads_verified,
    sha256_digest,
)
from noria.profile import build_profile
from noria.runspec import SuccessSummary
from noria.xgboost_artifact import Encoding, XGBoostModel
from noria_server.model import ServedModel

ENCODING = Encoding(
    ("x1", "x2", "colour"),
    {"x1": "numeric", "x2": "numeric", "colour": "categorical"},
    {"colour": ("blue", "green", "red")},
)


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "colour": rng.choice(["red", "green", "blue"], n).astype(object),
        }
    )
    frame.loc[::17, "x2"] = np.nan
    frame.loc[::23, "colour"] = None
    return frame


def _train(task: str, classes: int = 2) -> tuple[XGBoostModel, pd.DataFrame]:
    rows = _rows(600, 1)
    score = rows["x1"].to_numpy() + (rows["colour"] == "red").to_numpy()
    if task == "regression":
        labels, params = score, {"objective": "reg:squarederror"}
        names = None
    else:
        codes = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
        labels = codes.astype(float)
        params = (
            {"objective": "binary:logistic"}
            if classes == 2
            else {"objective": "multi:softprob", "num_class": classes}
        )
        names = [f"class-{i}" for i in range(classes)]
    matrix = xgb.DMatrix(ENCODING.matrix(rows), label=labels)
    booster = xgb.train(
        {**params, "tree_method": "hist", "max_depth": 3, "seed": 0}, matrix, num_boost_round=8
    )
    return XGBoostModel(booster, task, ENCODING, names), _rows(200, 2)


def _saved(tmp_path: Path, data: bytes) -> tuple[str, str, str]:
    folder = tmp_path / "ml" / "p" / "v1"
    folder.mkdir(parents=True)
    path = folder / xgboost_artifact.MODEL_FILE
    path.write_bytes(data)
    return f"file://{path}", sha256_digest(data), f"file://{tmp_path}"


@pytest.mark.parametrize(
    ("task", "classes"),
    [("classification", 2), ("classification", 3), ("regression", 0)],
    ids=["binary", "multiclass", "regression"],
)
def test_an_xgboost_model_round_trips_through_the_envelope_and_serves_the_same_predictions(
    tmp_path: Path, task: str, classes: int
) -> None:
    model, rows = _train(task, classes)
    data = xgboost_artifact.dumps(
        model.booster, task, ENCODING, None if task == "regression" else list(model.classes_)
    )
    uri, digest, root = _saved(tmp_path, data)
    profile = build_profile({f: rows[f].tolist() for f in ENCODING.features}, ENCODING.kinds)  # type: ignore[arg-type]
    profile_path = tmp_path / "ml" / "p" / "v1" / "profile.json"
    profile_path.write_text(profile.to_json())
    served = ServedModel.load(uri, digest, f"file://{profile_path}", root)
    assert served.schema.features == ENCODING.features
    assert served.is_classifier is (task == "classification")
    expected = model.predict(rows)
    np.testing.assert_array_equal(served.estimator.predict(rows), expected)
    served.warm_up(32)
    as_received = (
        rows.astype(object).where(rows.notna(), None).to_numpy()
    )  # what the server's request parser gives
    predicted, _ = served.predict(as_received)
    np.testing.assert_array_equal(predicted, expected)
    if task == "classification":
        assert served.classes == [f"class-{i}" for i in range(classes)]


def test_the_encoding_maps_unseen_and_missing_categories_and_numbers_to_nan() -> None:
    rows = pd.DataFrame({"x1": [1.5, None], "x2": ["2", "oops"], "colour": ["purple", None]})
    matrix = ENCODING.matrix(rows)
    assert matrix[0, 0] == 1.5 and np.isnan(matrix[1, 0])
    assert matrix[0, 1] == 2.0 and np.isnan(matrix[1, 1])
    assert np.isnan(matrix[:, 2]).all()
    assert ENCODING.matrix(pd.DataFrame({"x1": [0.0], "x2": [0.0], "colour": ["red"]}))[0, 2] == 2.0


def _edit(data: bytes, change: Callable[[dict[str, Any], dict[str, Any]], None]) -> bytes:
    """The envelope with its booster (and the envelope itself) changed, re-serialised as written."""
    document = json.loads(data)
    booster = json.loads(document["booster"])
    change(document, booster)
    document["booster"] = json.dumps(booster)
    return json.dumps(document, separators=(",", ":")).encode()


def _tree(booster: dict[str, Any]) -> dict[str, Any]:
    return booster["learner"]["gradient_booster"]["model"]["trees"][0]


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(_: dict[str, Any], booster: dict[str, Any]) -> None:
        target = booster
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


TAMPERING = [
    (
        "child-out-of-range",
        lambda _, b: _tree(b)["left_children"].__setitem__(0, 10_000),
        MALFORMED,
        "children",
    ),
    ("child-loops-back", lambda _, b: _tree(b)["right_children"].__setitem__(0, 0), MALFORMED, "later nodes"),
    (
        "split-feature-out-of-range",
        lambda _, b: _tree(b)["split_indices"].__setitem__(0, 99),
        MALFORMED,
        "feature 99",
    ),
    ("short-array", lambda _, b: _tree(b)["base_weights"].pop(), MALFORMED, "num_nodes"),
    (
        "categorical-split",
        lambda _, b: _tree(b).__setitem__("split_type", [1] * len(_tree(b)["left_children"])),
        UNTRUSTED_TYPE,
        "categorical",
    ),
    (
        "objective-not-written-by-noria",
        _set(["learner", "objective", "name"], "reg:gamma"),
        UNTRUSTED_TYPE,
        "reg:gamma",
    ),
    (
        "booster-not-written-by-noria",
        _set(["learner", "gradient_booster", "name"], "dart"),
        UNTRUSTED_TYPE,
        "dart",
    ),
    (
        "feature-count-differs",
        _set(["learner", "learner_model_param", "num_feature"], "7"),
        MALFORMED,
        "7 features",
    ),
    ("envelope-kinds-missing-a-feature", lambda d, _: d["kinds"].pop("x1"), MALFORMED, "kinds"),
    (
        "envelope-classes-not-labels",
        lambda d, _: d.__setitem__("classes", [{"a": 1}, 2]),
        MALFORMED,
        "class labels",
    ),
]


@pytest.mark.parametrize(
    ("change", "kind", "words"), [t[1:] for t in TAMPERING], ids=[t[0] for t in TAMPERING]
)
def test_a_tampered_xgboost_artifact_whose_digest_matches_is_refused_before_xgboost_reads_it(
    change: Callable[[dict[str, Any], dict[str, Any]], None], kind: str, words: str
) -> None:
    model, _ = _train("classification")
    tampered = _edit(
        xgboost_artifact.dumps(model.booster, "classification", ENCODING, list(model.classes_)), change
    )
    with pytest.raises(ArtifactError) as refused:
        loads_verified(tampered, sha256_digest(tampered))  # the attacker also wrote the digest
    assert refused.value.kind == kind and words in refused.value.message


def test_a_tampered_xgboost_artifact_is_refused_on_its_digest(tmp_path: Path) -> None:
    model, _ = _train("classification")
    data = xgboost_artifact.dumps(model.booster, "classification", ENCODING, list(model.classes_))
    uri, digest, root = _saved(tmp_path, data.replace(b'"red"', b'"rex"'))
    with pytest.raises(ArtifactError) as refused:
        load_verified(uri, sha256_digest(data), root)
    assert refused.value.kind == "DigestMismatch"
    assert digest != sha256_digest(data)


def test_the_format_name_is_the_apis_and_the_summarys() -> None:
    assert xgboost_artifact.ARTIFACT_FORMAT in get_args(Artifact.model_fields["format"].annotation)
    assert xgboost_artifact.ARTIFACT_FORMAT in get_args(get_type_hints(SuccessSummary)["artifactFormat"])
