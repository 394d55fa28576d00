"""Trusted types with crafted indices (noria.artifact_structure): each genuine model is altered the
way an attacker would edit its arrays, saved with skops, and must be refused as Malformed before
anything predicts with it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from noria import artifact
from noria.artifact import ArtifactError, dumps_model, loads_verified, sha256_digest


def _frame() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200),
                          "c": rng.choice([0.0, 1.0, 2.0], 200)})
    return frame, (frame["a"] + frame["c"] > 0.5).astype(int).to_numpy()


def _tree_child_out_of_range(model: Any) -> None:
    tree = model.tree_
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 1_000_000_000
    state["nodes"]["right_child"][0] = 1_000_000_000
    tree.__setstate__(state)


def _tree_feature_out_of_range(model: Any) -> None:
    tree = model.tree_
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["feature"][0] = 1_000_000
    tree.__setstate__(state)


def _hgb_child_out_of_range(model: Any) -> None:
    model._predictors[0][0].nodes["right"][0] = 4_000_000_000


def _hgb_category_out_of_bitset(model: Any) -> None:
    mapper = model._bin_mapper
    mapper.bin_thresholds_[int(np.flatnonzero(mapper.is_categorical_)[0])] = np.array([0.0, 1.0, 100_000.0])


def _kd_tree_index_out_of_data(model: Any) -> None:
    state = list(model._tree.__getstate__())
    state[1] = state[1].copy()
    state[1][0] = 10**9  # idx_array
    model._tree.__setstate__(tuple(state))


def _svc_counts_lie(model: Any) -> None:
    model._n_support = np.array([100_000, 3], dtype=np.int32)


CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], None], str]] = {
    "tree child index": (lambda: __import__("sklearn.tree", fromlist=["x"]).DecisionTreeClassifier(),
                         _tree_child_out_of_range, "child index"),
    "tree feature index": (lambda: __import__("sklearn.tree", fromlist=["x"]).DecisionTreeClassifier(),
                           _tree_feature_out_of_range, "feature"),
    "boosting child index": (lambda: __import__("sklearn.ensemble", fromlist=["x"]).HistGradientBoostingClassifier(
        max_iter=3), _hgb_child_out_of_range, "child index"),
    "boosting category beyond its bitset": (
        lambda: __import__("sklearn.ensemble", fromlist=["x"]).HistGradientBoostingClassifier(
            max_iter=3, categorical_features=[2]), _hgb_category_out_of_bitset, "0..255"),
    "kd-tree point index": (lambda: __import__("sklearn.neighbors", fromlist=["x"]).KNeighborsClassifier(
        algorithm="kd_tree"), _kd_tree_index_out_of_data, "point index"),
    "libsvm counts": (lambda: __import__("sklearn.svm", fromlist=["x"]).SVC(), _svc_counts_lie, "support-vector counts"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_indices_in_trusted_types_are_refused(name: str) -> None:
    make, corrupt, words = CASES[name]
    frame, target = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make().fit(frame.to_numpy() if "category" in name else frame, target)
    if "category" in name:
        # categorical splits come with an encoder the trainer never writes (refused as a type);
        # without it the predictor's category bitsets are what a crafted file would aim at
        model._preprocessor = None
    genuine, _ = dumps_model(model)
    loads_verified(genuine, sha256_digest(genuine))  # the unaltered model loads
    corrupt(model)
    data, _ = dumps_model(model)
    with pytest.raises(ArtifactError) as refused:
        loads_verified(data, sha256_digest(data))
    assert refused.value.kind == artifact.MALFORMED and words in refused.value.message, refused.value.message


def test_an_unchecked_tree_index_would_take_the_process_down(tmp_path: Path) -> None:
    """Why the check exists: scikit-learn, given the crafted tree through plain skops, dies (or reads
    garbage) at the first prediction instead of raising."""
    from sklearn.tree import DecisionTreeClassifier

    frame, target = _frame()
    model = DecisionTreeClassifier().fit(frame, target)
    _tree_child_out_of_range(model)
    path = tmp_path / "model.skops"
    path.write_bytes(dumps_model(model)[0])
    script = ("import sys, numpy as np, pandas as pd, skops.io as sio\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "m = sio.loads(data, trusted=sio.get_untrusted_types(data=data))\n"
              "m.predict(pd.DataFrame(np.zeros((1, 3)), columns=['a', 'b', 'c']))\n"
              "print('predicted')\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode < 0 and "predicted" not in done.stdout, (done.returncode, done.stdout, done.stderr[-500:])
