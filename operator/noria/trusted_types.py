"""The exact (skops loader → type) pairs ``noria.artifact`` lets skops build: data, not rules.

Derived from what Noria itself writes: ``python -m noria_trainer.written_types`` trains every
estimator the trainer allows (both tasks, binary/multiclass/string labels, each parameter value
that changes the objects a fitted model holds), adds the Pipelines a Dask run assembles for its linear
models (``noria_trainer.dask_linear``: fitted by dask-ml, the same scikit-learn types, no new name),
and prints this mapping from the nodes of the saved ``schema.json`` files. ``tests/unit/test_artifact_trust_list.py`` fails when the trainer writes a
pair missing here, and walks every callable under ``numpy``/``scipy``/``sklearn`` to show that
none outside this list is accepted. No module prefix is trusted.

Loaders absent from this mapping are refused whatever they name; among them every skops node that
calls a callable named by the file with arguments from the file (ConstructorFromReduceNode,
PartialNode, MethodNode, OperatorFuncNode) and the sparse/bytes/masked nodes Noria never writes.
Where a trusted name is itself called while loading, the call is harmless by construction: a
``TypeNode`` here names ``str`` or ``numpy.float64``; a ``LossNode`` names a loss class; a
``TreeNode`` always builds ``sklearn.tree._tree.Tree``.

Regenerate after upgrading scikit-learn, numpy or skops, or allowing an estimator, and review the
diff: every added name is code the server will run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# The pseudo-loader for the bit generator class a RandomGeneratorNode makes skops instantiate.
BIT_GENERATOR_KEY: Final = "RandomGeneratorNode.bit_generator"

# Generated with scikit-learn 1.9.1, numpy 2.4.6, scipy 1.17.1, skops 0.16.0.
TRUSTED_TYPES: Final[Mapping[str, frozenset[str]]] = {
    'DTypeNode': frozenset({
        'numpy.dtype',
    }),
    'DictNode': frozenset({
        'builtins.dict',
    }),
    'JsonNode': frozenset({
        'builtins.str',
    }),
    'ListNode': frozenset({
        'builtins.list',
    }),
    'LossNode': frozenset({
        'sklearn._loss._loss.CyAbsoluteError',
        'sklearn._loss._loss.CyExponentialLoss',
        'sklearn._loss._loss.CyHalfBinomialLoss',
        'sklearn._loss._loss.CyHalfGammaLoss',
        'sklearn._loss._loss.CyHalfMultinomialLoss',
        'sklearn._loss._loss.CyHalfPoissonLoss',
        'sklearn._loss._loss.CyHalfSquaredError',
        'sklearn._loss._loss.CyHuberLoss',
        'sklearn._loss._loss.CyPinballLoss',
        'sklearn.linear_model._sgd_fast.EpsilonInsensitive',
        'sklearn.linear_model._sgd_fast.Hinge',
        'sklearn.linear_model._sgd_fast.ModifiedHuber',
        'sklearn.linear_model._sgd_fast.SquaredEpsilonInsensitive',
        'sklearn.linear_model._sgd_fast.SquaredHinge',
    }),
    'NdArrayNode': frozenset({
        'numpy.float64',
        'numpy.int64',
        'numpy.ndarray',
        'numpy.uint64',
    }),
    'ObjectNode': frozenset({
        'sklearn._loss.link.HalfLogitLink',
        'sklearn._loss.link.IdentityLink',
        'sklearn._loss.link.Interval',
        'sklearn._loss.link.LogLink',
        'sklearn._loss.link.LogitLink',
        'sklearn._loss.link.MultinomialLogit',
        'sklearn._loss.loss.AbsoluteError',
        'sklearn._loss.loss.ExponentialLoss',
        'sklearn._loss.loss.HalfBinomialLoss',
        'sklearn._loss.loss.HalfGammaLoss',
        'sklearn._loss.loss.HalfMultinomialLoss',
        'sklearn._loss.loss.HalfPoissonLoss',
        'sklearn._loss.loss.HalfSquaredError',
        'sklearn._loss.loss.HuberLoss',
        'sklearn._loss.loss.PinballLoss',
        'sklearn.compose._column_transformer.ColumnTransformer',
        'sklearn.dummy.DummyClassifier',
        'sklearn.dummy.DummyRegressor',
        'sklearn.ensemble._forest.ExtraTreesClassifier',
        'sklearn.ensemble._forest.ExtraTreesRegressor',
        'sklearn.ensemble._forest.RandomForestClassifier',
        'sklearn.ensemble._forest.RandomForestRegressor',
        'sklearn.ensemble._gb.GradientBoostingClassifier',
        'sklearn.ensemble._gb.GradientBoostingRegressor',
        'sklearn.ensemble._hist_gradient_boosting.binning._BinMapper',
        'sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier',
        'sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingRegressor',
        'sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor',
        'sklearn.ensemble._weight_boosting.AdaBoostClassifier',
        'sklearn.ensemble._weight_boosting.AdaBoostRegressor',
        'sklearn.impute._base.SimpleImputer',
        'sklearn.linear_model._base.LinearRegression',
        'sklearn.linear_model._coordinate_descent.ElasticNet',
        'sklearn.linear_model._coordinate_descent.Lasso',
        'sklearn.linear_model._glm.glm.PoissonRegressor',
        'sklearn.linear_model._huber.HuberRegressor',
        'sklearn.linear_model._logistic.LogisticRegression',
        'sklearn.linear_model._ridge.Ridge',
        'sklearn.linear_model._ridge.RidgeClassifier',
        'sklearn.linear_model._stochastic_gradient.SGDClassifier',
        'sklearn.linear_model._stochastic_gradient.SGDRegressor',
        'sklearn.metrics._dist_metrics.EuclideanDistance64',
        'sklearn.metrics._dist_metrics.ManhattanDistance64',
        'sklearn.naive_bayes.GaussianNB',
        'sklearn.neighbors._ball_tree.BallTree',
        'sklearn.neighbors._classification.KNeighborsClassifier',
        'sklearn.neighbors._kd_tree.KDTree',
        'sklearn.neighbors._regression.KNeighborsRegressor',
        'sklearn.neural_network._multilayer_perceptron.MLPClassifier',
        'sklearn.neural_network._multilayer_perceptron.MLPRegressor',
        'sklearn.neural_network._stochastic_optimizers.AdamOptimizer',
        'sklearn.neural_network._stochastic_optimizers.SGDOptimizer',
        'sklearn.pipeline.Pipeline',
        'sklearn.preprocessing._data.StandardScaler',
        'sklearn.preprocessing._encoders.OneHotEncoder',
        'sklearn.preprocessing._label.LabelBinarizer',
        'sklearn.preprocessing._label.LabelEncoder',
        'sklearn.svm._classes.LinearSVC',
        'sklearn.svm._classes.LinearSVR',
        'sklearn.svm._classes.SVC',
        'sklearn.svm._classes.SVR',
        'sklearn.tree._classes.DecisionTreeClassifier',
        'sklearn.tree._classes.DecisionTreeRegressor',
        'sklearn.tree._classes.ExtraTreeClassifier',
        'sklearn.tree._classes.ExtraTreeRegressor',
    }),
    'RandomGeneratorNode': frozenset({
        'numpy.random._generator.Generator',
    }),
    'RandomGeneratorNode.bit_generator': frozenset({
        'numpy.random.PCG64',
    }),
    'RandomStateNode': frozenset({
        'numpy.random.mtrand.RandomState',
    }),
    'SliceNode': frozenset({
        'builtins.slice',
    }),
    'TreeNode': frozenset({
        'sklearn.tree._tree.Tree',
    }),
    'TupleNode': frozenset({
        'builtins.tuple',
    }),
    'TypeNode': frozenset({
        'builtins.str',
        'numpy.float64',
    }),
}

# XGBoost models (the Dask engine's envelope, noria.xgboost_artifact): no Python types are built, so
# the list is of the booster kinds and objectives whose JSON Noria's trainer writes. A booster or
# objective not named here is refused before XGBoost parses the model.
TRUSTED_XGBOOST_BOOSTERS: Final = frozenset({"gbtree"})
TRUSTED_XGBOOST_OBJECTIVES: Final = frozenset({"binary:logistic", "multi:softprob", "reg:squarederror"})
