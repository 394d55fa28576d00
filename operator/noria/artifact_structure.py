"""Index checks on the arrays compiled prediction code walks without bounds checks.

skops (and ``noria.artifact``'s exact type list) decide which *types* a file may build, not what
their arrays hold. A few trusted types feed arrays straight into Cython or C loops compiled
without bounds checks: a decision tree's child and feature indices, a HistGradientBoosting
predictor's nodes and category bitsets, a KD/ball tree's node table, libsvm's support-vector
counts. A crafted file with an index out of range would read (or, for the category bitsets, write)
outside an array at the first prediction: a crash, or worse. This module walks the loaded model
and checks every such index against the array it selects from, so a refusal is an
``ArtifactError`` before the server warms up, not a dead process at its first request.

Each check mirrors how scikit-learn builds these arrays: tree nodes are appended after their
parent (children have larger indices, so walking down always ends), a non-leaf node of a KD/ball
tree has both implicit children ``2i+1``, ``2i+2`` in the table, and libsvm's counts add up to the
stored support vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np

MAX_OBJECTS: Final = 200_000  # objects visited in one model; a forest of 1,000 trees is ~10,000


class StructureError(ValueError):
    """An index in a loaded model points outside the array it selects from."""


def check_model_structure(model: Any) -> None:
    """Raise StructureError naming the first array whose indices a prediction could overrun."""
    from sklearn.base import BaseEstimator
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.neighbors._ball_tree import BallTree
    from sklearn.neighbors._kd_tree import KDTree
    from sklearn.svm._base import BaseLibSVM
    from sklearn.tree._tree import Tree

    for path, obj, owner in _walk(model, BaseEstimator):
        if isinstance(obj, Tree):
            _check_tree(path, obj, owner)
        elif isinstance(obj, BaseHistGradientBoosting):
            _check_hist_gradient_boosting(path, obj)
        elif isinstance(obj, (KDTree, BallTree)):
            _check_neighbors_tree(path, obj)
        elif isinstance(obj, BaseLibSVM):
            _check_libsvm(path, obj)


def _walk(model: Any, estimator_type: type) -> Iterator[tuple[str, Any, Any]]:
    """(path, object, the estimator holding it) for the model and everything its estimators hold."""
    stack: list[tuple[str, Any, Any]] = [(type(model).__name__, model, None)]
    seen: set[int] = set()
    while stack:
        path, obj, owner = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, bool)):
            continue
        seen.add(id(obj))
        if len(seen) > MAX_OBJECTS:
            raise StructureError(f"the model holds more than {MAX_OBJECTS} objects")
        yield path, obj, owner
        if isinstance(obj, (list, tuple)):
            stack.extend((f"{path}[{i}]", v, owner) for i, v in enumerate(obj))
        elif isinstance(obj, dict):
            stack.extend((f"{path}[{k!r}]", v, owner) for k, v in obj.items())
        elif isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend((f"{path}[{i}]", v, owner) for i, v in enumerate(obj.ravel()))
        elif isinstance(obj, estimator_type):
            stack.extend((f"{path}.{k}", v, obj) for k, v in vars(obj).items())


def _fail(path: str, what: str) -> StructureError:
    return StructureError(f"{path}: {what}")


def _n_features(owner: Any) -> int | None:
    n = getattr(owner, "n_features_in_", None)
    return int(n) if isinstance(n, (int, np.integer)) else None


def _check_tree(path: str, tree: Any, owner: Any) -> None:
    n = int(tree.node_count)
    left, right, feature = (np.asarray(a) for a in (tree.children_left, tree.children_right, tree.feature))
    if not (left.shape == right.shape == feature.shape == (n,)) or n < 1:
        raise _fail(path, f"node arrays of {left.shape}, {right.shape}, {feature.shape} for {n} nodes")
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        raise _fail(path, "a node has exactly one child")
    index = np.arange(n)
    inner = ~leaf
    if np.any((left[inner] <= index[inner]) | (left[inner] >= n) | (right[inner] <= index[inner]) | (right[inner] >= n)):
        raise _fail(path, "a child index is out of range or not after its parent")
    n_features = int(tree.n_features)
    expected = _n_features(owner)
    if expected is not None and n_features != expected:
        raise _fail(path, f"the tree splits on {n_features} features, its estimator takes {expected}")
    if np.any((feature[inner] < 0) | (feature[inner] >= n_features)):
        raise _fail(path, f"a split feature index is outside 0..{n_features - 1}")
    if tree.value.shape[0] != n:
        raise _fail(path, f"{tree.value.shape[0]} leaf values for {n} nodes")


def _check_hist_gradient_boosting(path: str, model: Any) -> None:
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    n_features = _n_features(model)
    mapper = getattr(model, "_bin_mapper", None)
    predictors = getattr(model, "_predictors", None)
    if n_features is None or mapper is None or predictors is None:
        return  # not fitted: predict refuses on its own
    categorical = getattr(mapper, "is_categorical_", None)
    thresholds = getattr(mapper, "bin_thresholds_", None)
    if categorical is None or thresholds is None or len(categorical) != n_features or len(thresholds) != n_features:
        raise _fail(path, f"the bin mapper does not describe {n_features} features")
    for f in np.flatnonzero(categorical):
        values = np.asarray(thresholds[f])
        if values.size and (np.any(values < 0) or np.any(values > 255) or np.any(values != np.floor(values))):
            raise _fail(path, f"categories of feature {f} are not integers in 0..255 (they index a 256-bit set)")
    for i, iteration in enumerate(predictors):
        for k, predictor in enumerate(iteration):
            where = f"{path}._predictors[{i}][{k}]"
            nodes = predictor.nodes
            if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 \
                    or nodes.size < 1:
                raise _fail(where, "nodes are not a non-empty array of predictor records")
            n = nodes.size
            index = np.arange(n)
            inner = nodes["is_leaf"] == 0
            left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
            if np.any((left[inner] <= index[inner]) | (left[inner] >= n) | (right[inner] <= index[inner])
                      | (right[inner] >= n)):
                raise _fail(where, "a child index is out of range or not after its parent")
            features = nodes["feature_idx"][inner]
            if np.any((features < 0) | (features >= n_features)):
                raise _fail(where, f"a split feature index is outside 0..{n_features - 1}")
            split_on_category = inner & (nodes["is_categorical"] != 0)
            for name in ("raw_left_cat_bitsets", "binned_left_cat_bitsets"):
                bitsets = getattr(predictor, name)
                if not isinstance(bitsets, np.ndarray) or bitsets.ndim != 2 or bitsets.shape[1] != 8:
                    raise _fail(where, f"{name} is not an (n, 8) array")
                if np.any(nodes["bitset_idx"][split_on_category] >= bitsets.shape[0]):
                    raise _fail(where, f"a categorical split's bitset index is outside {name}")
            if np.any(~np.asarray(categorical, dtype=bool)[nodes["feature_idx"][split_on_category]]):
                raise _fail(where, "a categorical split is on a feature the bin mapper calls numeric")


def _check_neighbors_tree(path: str, tree: Any) -> None:
    data, idx_array, node_data, node_bounds = tree.get_arrays()
    n_samples, n_nodes = data.shape[0], node_data.shape[0]
    if n_nodes < 1 or node_bounds.shape[1:] != (n_nodes, data.shape[1]):
        raise _fail(path, f"node table of {n_nodes} and bounds of {node_bounds.shape} for data {data.shape}")
    if idx_array.shape != (n_samples,) or np.any((idx_array < 0) | (idx_array >= n_samples)):
        raise _fail(path, "a point index is outside the data")
    start, end, leaf = node_data["idx_start"], node_data["idx_end"], node_data["is_leaf"]
    if np.any((start < 0) | (start > end) | (end > n_samples)):
        raise _fail(path, "a node's point range is outside the index array")
    inner = np.flatnonzero(leaf == 0)
    if inner.size and 2 * int(inner.max()) + 2 >= n_nodes:
        raise _fail(path, "a node that is not a leaf has children beyond the node table")


def _check_libsvm(path: str, model: Any) -> None:
    counts = np.asarray(getattr(model, "_n_support", np.empty(0)))
    vectors = getattr(model, "support_vectors_", None)
    if vectors is None or not counts.size:
        return  # not fitted: predict refuses on its own
    n_sv = vectors.shape[0]
    classifier = getattr(model, "_impl", "") in ("c_svc", "nu_svc")  # libsvm reads per-class counts only then
    if np.any(counts < 0) or (classifier and int(np.sum(counts)) != n_sv) or np.asarray(model.support_).shape != (n_sv,):
        raise _fail(path, f"support-vector counts {counts.tolist()} do not match {vectors.shape[0]} stored vectors")
    n_features = _n_features(model)
    if model.kernel != "precomputed" and n_features is not None and vectors.shape[1] != n_features:
        raise _fail(path, f"support vectors of {vectors.shape[1]} features for an estimator of {n_features}")
    n_class = int(counts.size) if classifier else 2
    if n_class < 2:
        raise _fail(path, f"{n_class} class(es) of support vectors")
    pairs = n_class * (n_class - 1) // 2
    if model._dual_coef_.shape != (n_class - 1, n_sv) or np.asarray(model._intercept_).shape != (pairs,):
        raise _fail(path, f"dual coefficients {model._dual_coef_.shape} / intercepts "
                          f"{np.asarray(model._intercept_).shape} do not fit {n_class} classes and {n_sv} vectors")
    for name in ("_probA", "_probB"):
        size = np.asarray(getattr(model, name, np.empty(0))).size
        if size not in (0, pairs):
            raise _fail(path, f"{name} has {size} values, not 0 or {pairs}")
