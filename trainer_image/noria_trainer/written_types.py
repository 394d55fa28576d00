"""What the trainer writes into a ``model.skops``: the source of ``noria.trusted_types``.

The loader (``noria.artifact``) trusts an exact list of (skops loader, type) pairs. That list is
not chosen by hand: it is what the pipelines this trainer builds contain once fitted. This module
trains every allowed estimator (``estimators.ALLOWED_ESTIMATORS``) for each task it supports, on a
frame with numeric and categorical features, with binary, multiclass and string labels, and once
per parameter value that changes which objects a fitted model holds (its loss, its neighbour
search structure, its optimiser), then walks each saved ``schema.json`` and collects every node.

``python -m noria_trainer.written_types`` prints the result as the body of
``operator/noria/trusted_types.py``; ``tests/unit/test_artifact_trust_list.py`` fails when the
committed list lacks something the trainer writes. A pipeline parameter outside this matrix that
brings a new type is refused by the trainer's own reload check (the saved model must load through
the same loader as the server), with the type named, never served.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any, Final

from noria.trusted_types import BIT_GENERATOR_KEY

from noria_trainer.estimators import ALLOWED_ESTIMATORS, EstimatorError, build_pipeline, estimator_class
from noria_trainer.spec import Task

# Parameter values that change the *types* a fitted estimator holds (not just its numbers).
TYPE_CHANGING_PARAMS: Final[dict[str, list[dict[str, Any]]]] = {
    "SGDClassifier": [{"loss": loss} for loss in ("hinge", "log_loss", "modified_huber", "squared_hinge",
                                                  "perceptron", "squared_error", "huber", "epsilon_insensitive",
                                                  "squared_epsilon_insensitive")],
    "SGDRegressor": [{"loss": loss} for loss in ("squared_error", "huber", "epsilon_insensitive",
                                                 "squared_epsilon_insensitive")],
    "GradientBoostingClassifier": [{"loss": "log_loss"}, {"loss": "exponential"}],
    "GradientBoostingRegressor": [{"loss": loss} for loss in ("squared_error", "absolute_error", "huber", "quantile")],
    "HistGradientBoostingClassifier": [{}, {"early_stopping": True, "validation_fraction": 0.2}],
    "HistGradientBoostingRegressor": [{"loss": loss} for loss in ("squared_error", "absolute_error", "gamma",
                                                                  "poisson")] + [{"loss": "quantile", "quantile": 0.5}],
    "KNeighborsClassifier": [{"algorithm": a} for a in ("kd_tree", "ball_tree", "brute")] + [{"metric": "manhattan"}],
    "KNeighborsRegressor": [{"algorithm": a} for a in ("kd_tree", "ball_tree", "brute")] + [{"metric": "manhattan"}],
    "MLPClassifier": [{"solver": s, "max_iter": 20} for s in ("adam", "sgd", "lbfgs")],
    "MLPRegressor": [{"solver": s, "max_iter": 20} for s in ("adam", "sgd", "lbfgs")],
    "SVC": [{}, {"probability": True}],
    "AdaBoostClassifier": [{"n_estimators": 5}],
    "AdaBoostRegressor": [{"n_estimators": 5}],
    "RandomForestClassifier": [{"n_estimators": 3}],
    "RandomForestRegressor": [{"n_estimators": 3}],
    "ExtraTreesClassifier": [{"n_estimators": 3}],
    "ExtraTreesRegressor": [{"n_estimators": 3}],
}
# Labels: binary ints, three classes, and strings (classes_ becomes an object array).
LABEL_KINDS: Final = ("binary", "multiclass", "strings")


def _frames(rows: int = 120) -> tuple[Any, dict[str, Any]]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=rows), "b": rng.normal(size=rows),
                          "c": rng.choice(["x", "y", "z"], rows).astype(object)})
    frame.loc[3, "a"] = np.nan
    frame.loc[5, "c"] = None
    b = frame["b"].to_numpy()
    targets = {
        "binary": (b > 0).astype(int),
        "multiclass": np.digitize(b, [-0.5, 0.5]),
        "strings": np.where(b > 0, "yes", "no").astype(object),
        "regression": np.exp(b) + 1.0,  # positive, so gamma and poisson losses fit too
    }
    return frame, targets


def training_matrix() -> Iterator[tuple[str, Task, dict[str, Any], str]]:
    """(estimator path, task, params, target kind) for every combination the list is derived from."""
    for module, names in sorted(ALLOWED_ESTIMATORS.items()):
        for name in sorted(names):
            path = f"{module}.{name}"
            for task in ("classification", "regression"):
                try:
                    estimator_class(path, task)
                except EstimatorError:
                    continue
                for params in TYPE_CHANGING_PARAMS.get(name, [{}]):
                    for target in (LABEL_KINDS if task == "classification" else ("regression",)):
                        yield path, task, params, target


def schema_nodes(schema: Any) -> Iterator[tuple[str, str]]:
    """Every (loader, ``module.class``) in a parsed skops ``schema.json``, wherever it sits."""
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__loader__" in item:
                yield str(item["__loader__"]), f"{item.get('__module__')}.{item.get('__class__')}"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def written_types() -> dict[str, set[str]]:
    """Loader → type names over the whole training matrix, as the trainer would save them."""
    import skops.io as sio

    frame, targets = _frames()
    found: dict[str, set[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of deliberately short fits
        for path, task, params, target in training_matrix():
            # numeric and categorical features: a numeric-only frame holds a subset of these types
            model = build_pipeline(path, task, params, ["a", "b"], ["c"], seed=0)
            try:
                model.fit(frame, targets[target])
            except ValueError:
                continue  # e.g. an exponential loss on three classes: the trainer cannot write it either
            _collect(found, sio.dumps(model))
        for model in _dask_linear_models():
            _collect(found, sio.dumps(model))
    return found


def _collect(found: dict[str, set[str]], data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    for loader, name in schema_nodes(schema):
        found.setdefault(loader, set()).add(name)
    found.setdefault(BIT_GENERATOR_KEY, set()).update(_bit_generators(schema))


def _dask_linear_models() -> Iterator[Any]:
    """The Pipelines a Dask run writes for its linear models (noria_trainer.dask_linear): fitted state
    set from statistics, not by ``fit``, so listed apart, for binary int and string labels."""
    import numpy as np

    from noria_trainer import dask_linear

    prepared = dask_linear.Prepared(
        ("a", "b"), ("c",), (0.0, 0.0), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0), {"c": ("__missing__", "x", "y")}, 10
    )
    for path in sorted(dask_linear.DASK_LINEAR_PARAMS):
        task: Task = "classification" if path.endswith("LogisticRegression") else "regression"
        for classes in ((0, 1), ("no", "yes")) if task == "classification" else (None,):
            yield dask_linear.assemble(path, task, {}, ["a", "b", "c"], prepared, np.zeros(5), 0.0, classes, 0)





def _bit_generators(schema: Any) -> set[str]:
    from noria.artifact import bit_generator_name

    out = set()
    stack = [schema]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("__loader__") == "RandomGeneratorNode":
                name = bit_generator_name(item)
                if name:
                    out.add(f"numpy.random.{name}")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out


def render(found: dict[str, set[str]]) -> str:
    """The mapping as Python source, one name per line, sorted, for ``noria/trusted_types.py``."""
    lines = ["TRUSTED_TYPES: Final[Mapping[str, frozenset[str]]] = {"]
    for loader in sorted(found):
        if not found[loader]:
            continue
        lines.append(f"    {loader!r}: frozenset({{")
        lines.extend(f"        {name!r}," for name in sorted(found[loader]))
        lines.append("    }),")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    sys.stdout.write(render(written_types()))
