"""Which estimators a pipeline may name, and the preprocessing saved with them.

``spec.model.estimator`` is an import path written by a user, and importing a module runs its
code, so the path is checked against an allow-list *as a string* before anything is imported:
``os.system``, ``builtins.eval`` or ``sklearn.utils._testing.X`` never reach ``importlib``. Only
scikit-learn estimators are listed because the server loads models with skops under a trusted-type
allow-list of sklearn/numpy/scipy types (noria.artifact): a model that the server would refuse is
refused here first.

The saved object is a full sklearn ``Pipeline`` (imputation, one-hot encoding, scaling where the
estimator is sensitive to scale, then the estimator), so the server sends raw feature values.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from noria_trainer.spec import Task

# Module → class names. A class must also match the task (classifier or regressor) when built.
ALLOWED_ESTIMATORS: Final[dict[str, frozenset[str]]] = {
    "sklearn.ensemble": frozenset({
        "HistGradientBoostingClassifier", "HistGradientBoostingRegressor", "RandomForestClassifier",
        "RandomForestRegressor", "ExtraTreesClassifier", "ExtraTreesRegressor", "GradientBoostingClassifier",
        "GradientBoostingRegressor", "AdaBoostClassifier", "AdaBoostRegressor",
    }),
    "sklearn.linear_model": frozenset({
        "LogisticRegression", "LinearRegression", "Ridge", "RidgeClassifier", "Lasso", "ElasticNet",
        "SGDClassifier", "SGDRegressor", "HuberRegressor", "PoissonRegressor",
    }),
    "sklearn.tree": frozenset({"DecisionTreeClassifier", "DecisionTreeRegressor"}),
    "sklearn.neighbors": frozenset({"KNeighborsClassifier", "KNeighborsRegressor"}),
    "sklearn.svm": frozenset({"SVC", "SVR", "LinearSVC", "LinearSVR"}),
    "sklearn.naive_bayes": frozenset({"GaussianNB"}),
    "sklearn.neural_network": frozenset({"MLPClassifier", "MLPRegressor"}),
    "sklearn.dummy": frozenset({"DummyClassifier", "DummyRegressor"}),
}
# Estimators whose result depends on feature scale get a StandardScaler in front.
SCALE_SENSITIVE_MODULES: Final = frozenset({"sklearn.linear_model", "sklearn.neighbors", "sklearn.svm",
                                            "sklearn.neural_network"})
MISSING_CATEGORY: Final = "__missing__"


class EstimatorError(ValueError):
    """The estimator path is not allowed, does not fit the task, or its params are wrong."""


# --- the Dask engine (compute.engine: dask) ------------------------------------------------------
# Trained by XGBoost across the cluster's workers (noria_trainer.dask_training) and saved in the
# XGBoost envelope (noria.xgboost_artifact), never as a Python object. They train on the Dask engine
# only, and the scikit-learn estimators above on the single engine only: a scikit-learn estimator
# needs the whole window in one process, which is what the Dask engine is for avoiding.
DASK_ESTIMATORS: Final[dict[str, str]] = {
    "xgboost.XGBClassifier": "classification",
    "xgboost.XGBRegressor": "regression",
}
# XGBoost's scikit-learn parameter names the Dask engine accepts, with the type each must have.
XGBOOST_PARAMS: Final[dict[str, type]] = {
    "n_estimators": int, "max_depth": int, "learning_rate": float, "min_child_weight": float,
    "subsample": float, "colsample_bytree": float, "reg_lambda": float, "reg_alpha": float, "gamma": float,
    "max_bin": int,
}
XGBOOST_DEFAULT_ROUNDS: Final = 100
XGBOOST_DEFAULT_MAX_BIN: Final = 256  # one byte per feature and row in the QuantileDMatrix
_XGBOOST_NAMES: Final = {"learning_rate": "eta", "reg_lambda": "lambda", "reg_alpha": "alpha"}


def check_engine(path: str, task: Task, engine: str) -> None:
    """Refuse an estimator the engine does not train, or a Dask estimator of the other task."""
    if engine == "dask":
        if path not in DASK_ESTIMATORS:
            raise EstimatorError(f"estimator {path!r} does not train on compute.engine dask, which trains "
                                 f"{' or '.join(DASK_ESTIMATORS)}; use compute.engine single for scikit-learn")
        if DASK_ESTIMATORS[path] != task:
            raise EstimatorError(f"estimator {path!r} is for {DASK_ESTIMATORS[path]} but spec.model.task is {task}")
    elif path in DASK_ESTIMATORS:
        raise EstimatorError(f"estimator {path!r} trains on compute.engine dask only (set spec.compute.engine: dask)")


def xgboost_params(task: Task, params: dict[str, Any], n_classes: int, seed: int) -> tuple[dict[str, Any], int, int]:
    """XGBoost's training parameters, boosting rounds and ``max_bin`` from ``spec.model.params``."""
    unknown = sorted(set(params) - set(XGBOOST_PARAMS))
    if unknown:
        raise EstimatorError(f"XGBoost on the Dask engine takes no parameter(s) {', '.join(unknown)} "
                             f"(allowed: {', '.join(XGBOOST_PARAMS)})")
    for name, value in params.items():
        kind = XGBOOST_PARAMS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise EstimatorError(f"XGBoost parameter {name} must be {'an integer' if kind is int else 'a number'}")
    booster: dict[str, Any] = {"tree_method": "hist", "seed": seed}
    if task == "regression":
        booster["objective"] = "reg:squarederror"
    elif n_classes > 2:
        booster.update(objective="multi:softprob", num_class=n_classes)
    else:
        booster["objective"] = "binary:logistic"
    for name, value in params.items():
        if name not in ("n_estimators", "max_bin"):
            booster[_XGBOOST_NAMES.get(name, name)] = value
    return (booster, int(params.get("n_estimators", XGBOOST_DEFAULT_ROUNDS)),
            int(params.get("max_bin", XGBOOST_DEFAULT_MAX_BIN)))


def check_import_path(path: str) -> tuple[str, str]:
    """``(module, class)`` if ``path`` is on the allow-list; never imports anything."""
    module, _, name = path.rpartition(".")
    if not module or not name:
        raise EstimatorError(f"estimator {path!r} is not an import path like sklearn.ensemble.RandomForestClassifier")
    allowed = ALLOWED_ESTIMATORS.get(module)
    if allowed is None or name not in allowed:
        families = ", ".join(sorted(ALLOWED_ESTIMATORS))
        raise EstimatorError(
            f"estimator {path!r} is not on the allow-list (scikit-learn estimators in {families}); "
            "other import paths are refused before import")
    return module, name


def estimator_class(path: str, task: Task) -> type:
    module_name, name = check_import_path(path)
    cls = getattr(importlib.import_module(module_name), name, None)
    if cls is None:
        raise EstimatorError(f"estimator {path!r} is not in this scikit-learn version")
    from sklearn.base import is_classifier, is_regressor

    probe = cls()
    if task == "classification" and not is_classifier(probe):
        raise EstimatorError(f"estimator {path!r} is not a classifier but spec.model.task is classification")
    if task == "regression" and not is_regressor(probe):
        raise EstimatorError(f"estimator {path!r} is not a regressor but spec.model.task is regression")
    return cls


def build_estimator(path: str, task: Task, params: dict[str, Any], seed: int) -> Any:
    cls = estimator_class(path, task)
    valid = cls().get_params()
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise EstimatorError(f"estimator {path} has no parameter(s) {', '.join(unknown)}")
    merged = dict(params)
    if "random_state" in valid and "random_state" not in merged:
        merged["random_state"] = seed  # reproducible runs unless the user says otherwise
    try:
        return cls(**merged)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(f"estimator {path} rejected its params: {exc}") from exc


def build_pipeline(path: str, task: Task, params: dict[str, Any], numeric: list[str], categorical: list[str],
                   seed: int) -> Any:
    """Preprocessing + estimator as one sklearn Pipeline (steps ``prepare`` and ``model``)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    module_name, _ = check_import_path(path)
    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if module_name in SCALE_SENSITIVE_MODULES:
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        transformers.append(("numeric", Pipeline(numeric_steps), numeric))
    if categorical:
        transformers.append(("categorical", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("encode", OneHotEncoder(handle_unknown="ignore", min_frequency=None)),
        ]), categorical))
    prepare = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
    return Pipeline([("prepare", prepare), ("model", build_estimator(path, task, params, seed))])
