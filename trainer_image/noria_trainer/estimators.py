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

from noria.api.training_pipeline import DASK_ESTIMATOR_MESSAGE, DASK_ESTIMATORS

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
# DASK_ESTIMATORS (the API's list, checked by the API server too) by task. XGBoost's are trained
# across the cluster's workers (noria_trainer.dask_training) and saved in the XGBoost envelope
# (noria.xgboost_artifact); they train on the Dask engine only. The scikit-learn linear models listed
# there are fitted by dask-ml on the Dask engine (noria_trainer.dask_linear) and saved as the same
# scikit-learn Pipeline a single run writes. Every other scikit-learn estimator needs the whole window
# in one process, which is what the Dask engine is for avoiding: single engine only.
# The dask-ml fit of each linear model, and the spec.model.params it takes (with their types): the
# objective dask-glm minimises is the scikit-learn estimator's (docs/training-dask.md).
DASK_LINEAR_PARAMS: Final[dict[str, dict[str, type]]] = {
    "sklearn.linear_model.LogisticRegression": {"C": float, "max_iter": int, "tol": float, "fit_intercept": bool},
    "sklearn.linear_model.LinearRegression": {"fit_intercept": bool},
    "sklearn.linear_model.Ridge": {"alpha": float, "max_iter": int, "tol": float, "fit_intercept": bool},
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
    """Refuse an estimator the engine does not train, or a Dask estimator of the other task (the API
    server refuses both already; a pipeline stored before a rule existed is refused here)."""
    if engine == "dask":
        if path not in DASK_ESTIMATORS:
            raise EstimatorError(f"spec.model.estimator {path!r}: {DASK_ESTIMATOR_MESSAGE}")
        if DASK_ESTIMATORS[path] != task:
            raise EstimatorError(f"estimator {path!r} is for {DASK_ESTIMATORS[path]} but spec.model.task is {task}")
    elif path in DASK_ESTIMATORS and path not in DASK_LINEAR_PARAMS:
        raise EstimatorError(f"estimator {path!r} trains on compute.engine dask only (set spec.compute.engine: dask)")


def check_dask_params(path: str, task: Task, params: dict[str, Any], seed: int) -> None:
    """Refuse ``spec.model.params`` the Dask engine's learner for ``path`` does not take."""
    if path in DASK_LINEAR_PARAMS:
        linear_params(path, params)
    else:
        xgboost_params(task, params, 2, seed)


def linear_params(path: str, params: dict[str, Any]) -> dict[str, Any]:
    """``spec.model.params`` of a linear model on the Dask engine, checked against DASK_LINEAR_PARAMS."""
    allowed = DASK_LINEAR_PARAMS[path]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise EstimatorError(f"spec.model.params: {path} on compute.engine dask takes no parameter(s) "
                             f"{', '.join(unknown)} (allowed: {', '.join(allowed)})")
    for name, value in params.items():
        kind = allowed[name]
        if kind is bool:
            if not isinstance(value, bool):
                raise EstimatorError(f"spec.model.params.{name} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise EstimatorError(f"spec.model.params.{name} must be {'an integer' if kind is int else 'a number'}")
        elif value < 0 or (value == 0 and name != "alpha"):  # alpha 0 is no penalty: LinearRegression
            raise EstimatorError(f"spec.model.params.{name} must be {'at least 0' if name == 'alpha' else 'positive'}")
    return dict(params)


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
