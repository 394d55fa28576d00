"""Training rows from a Feast feature repository (TrainingPipeline ``spec.data.feast``, docs/training-feast.md).

``spec.data.source`` is then the *entity source*: entity keys, the label's event time
(``timestampColumn``) and the target. Each of its rows gets the feature values Feast's
point-in-time join finds for it: the newest value of each feature at or before the row's time (and
within the feature view's ttl), never one written later. That is what keeps a value that only
became known after the label from leaking into training.

Feast is imported only here and only when a pipeline names a repository: the trainer without the
``feast`` extra runs every other pipeline, and a Feast pipeline there fails as a data failure that
says which image has it. Feast (0.67) needs pandas < 3, so this module and every trainer module it
runs with must work on pandas 2 and 3 (the ``.venv-feast`` venv and the ``noria-trainer-feast``
image hold pandas 2; docs/training-feast.md says why).

The pure parts (feature column names, the definitions digest) are functions of plain values; the
one function doing I/O is :func:`historical_rows`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from noria_trainer.data import FEEDBACK_ID_COLUMN, DataError, parse_timestamps
from noria_trainer.spec import FeastData

FEAST_TIMESTAMP = "event_timestamp"  # the column Feast reads an entity row's time from
# Columns of a feedback push source besides the entity keys and the features as served
# (noria_server.feast_sink; examples/feast-churn/features.py, churn_feedback).
PUSHED_LABEL, PUSHED_PREDICTION_ID = "label", "prediction_id"
ROW_COLUMN = "__noria_entity_row"  # the entity row's position: Feast returns rows in its own order


@dataclass(frozen=True)
class FeastRows:
    frame: pd.DataFrame  # the entity source's rows, in their order, with the feature columns added
    features: list[str]  # the feature columns, in the order the service or the list names them
    lineage: dict[str, Any]  # repository, featureService, definitionsDigest (ModelVersion lineage.data.feast)
    unmatched: int = 0  # entity rows Feast had no value of any feature for (kept, with nulls)


def repository_dir(uri: str) -> str:
    """The local folder of a ``file://`` repository. Feast opens its ``feature_store.yaml`` itself,
    from a folder, so an object-store repository is refused by name rather than half-read."""
    if not uri.startswith("file://"):
        raise DataError(
            f"spec.data.feast.repository {uri!r}: only file:// repositories are read yet "
            "(mount the repository into the trainer pod, e.g. under the store volume)"
        )
    return uri[len("file://") :]


def feature_columns(references: Iterable[str]) -> list[str]:
    """The columns Feast adds for ``<view>:<feature>`` references (without full feature names: the
    feature's own name). Two views offering a feature of the same name would collide: refused.

    >>> feature_columns(["stats:tenure", "stats:charges", "usage:calls"])
    ['tenure', 'charges', 'calls']
    """
    columns: list[str] = []
    for reference in references:
        view, _, name = reference.partition(":")
        if not view or not name:
            raise DataError(f"feature reference {reference!r} is not <featureView>:<feature>")
        if name in columns:
            raise DataError(
                f"feature {name!r} is named by two feature views ({reference} and an earlier one): "
                "the training set would have one column for both"
            )
        columns.append(name)
    return columns


def definitions_digest(view_specs: dict[str, bytes], service_spec: bytes | None) -> str:
    """sha256 over the serialized definitions (Feast's protobuf *specs*, without the registry's
    timestamps) of the feature views used and of the service: the same definitions give the same
    digest whenever and wherever they were applied; a changed source, ttl, schema or entity gives
    another.

    >>> definitions_digest({"b": b"2", "a": b"1"}, None) == definitions_digest({"a": b"1", "b": b"2"}, None)
    True
    """
    digest = hashlib.sha256()
    for name in sorted(view_specs):
        for part in (b"view", name.encode(), view_specs[name]):
            digest.update(len(part).to_bytes(8, "big") + part)
    if service_spec is not None:
        digest.update(len(b"service").to_bytes(8, "big") + b"service")
        digest.update(len(service_spec).to_bytes(8, "big") + service_spec)
    return "sha256:" + digest.hexdigest()


def entity_frame(entities: pd.DataFrame, timestamp_column: str) -> pd.DataFrame:
    """The entity rows as Feast reads them: the time in ``event_timestamp`` (UTC) and each row's
    position, so the result can be put back in the source's order."""
    if timestamp_column != FEAST_TIMESTAMP and FEAST_TIMESTAMP in entities.columns:
        raise DataError(
            f"the entity source has a column {FEAST_TIMESTAMP!r} besides timestampColumn "
            f"{timestamp_column!r}: Feast would read the wrong time; rename one of them"
        )
    out = entities.rename(columns={timestamp_column: FEAST_TIMESTAMP})
    out[FEAST_TIMESTAMP] = parse_timestamps(out, FEAST_TIMESTAMP)  # as every source is read: UTC, mixed forms
    out[ROW_COLUMN] = range(len(out))
    return out


def with_every_entity_row(
    rows: pd.DataFrame, found: pd.DataFrame, columns: list[str]
) -> tuple[pd.DataFrame, int]:
    """Every entity row, in the source's order, with the feature values Feast found for it and
    nulls where it found none; and how many rows it found nothing for. Feast's file offline store
    leaves out an entity row that no feature value matches (none yet at its time, or all older
    than the ttl): a labelled row would vanish silently, so it is put back and validation's
    missing-value check (spec.validation.maxMissingFraction) sees it like any other gap.

    >>> rows = pd.DataFrame({"k": [1, 2], ROW_COLUMN: [0, 1]})
    >>> out, unmatched = with_every_entity_row(rows, pd.DataFrame({"k": [2], ROW_COLUMN: [1], "f": [5.0]}), ["f"])
    >>> out["f"].tolist(), unmatched
    ([nan, 5.0], 1)
    """
    values = found[[ROW_COLUMN, *columns]]
    if values[ROW_COLUMN].duplicated().any():
        raise DataError("Feast returned an entity row twice: the training set would count its label twice")
    out = rows.merge(values, on=ROW_COLUMN, how="left", sort=False)
    unmatched = len(rows) - int(rows[ROW_COLUMN].isin(values[ROW_COLUMN]).sum())
    return out.drop(columns=[ROW_COLUMN]).reset_index(drop=True), unmatched


def feature_store_class() -> Any:
    """Feast's ``FeatureStore``, or a DataError saying which image holds Feast."""
    try:
        from feast import FeatureStore
    except ImportError as exc:
        raise DataError(
            "spec.data.feast needs the Feast client, which this trainer image does not hold: run "
            f"Feast pipelines on the noria-trainer-feast image ({exc})"
        ) from None
    return FeatureStore


def historical_rows(entities: pd.DataFrame, timestamp_column: str, feast: FeastData) -> FeastRows:
    """The entity rows with their point-in-time-correct features from the repository."""
    FeatureStore = feature_store_class()  # noqa: N806
    repo = repository_dir(feast.repository)
    try:
        store = FeatureStore(repo_path=repo)
        service = store.get_feature_service(feast.feature_service) if feast.feature_service else None
        if service is not None:
            references = [
                f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features
            ]
        else:
            references = list(feast.features or [])
        columns = feature_columns(references)
        views = sorted({reference.partition(":")[0] for reference in references})
        view_specs = {
            name: store.get_feature_view(name).to_proto().spec.SerializeToString(deterministic=True)
            for name in views
        }
        service_spec = service.to_proto().spec.SerializeToString(deterministic=True) if service else None
        rows = entity_frame(entities, timestamp_column)
        job = store.get_historical_features(
            entity_df=rows, features=service if service is not None else references
        )
        found = job.to_df()
    except DataError:
        raise
    # Feast raises many types (a missing view, a bad yaml, an unreadable source): all are data errors
    except Exception as exc:
        raise DataError(f"Feast repository {feast.repository}: {type(exc).__name__}: {exc}") from exc
    joined, unmatched = with_every_entity_row(rows, found, columns)
    joined = joined.rename(columns={FEAST_TIMESTAMP: timestamp_column})
    lineage = {
        "repository": feast.repository,
        "featureService": feast.feature_service,
        "definitionsDigest": definitions_digest(view_specs, service_spec),
    }
    return FeastRows(joined, columns, {k: v for k, v in lineage.items() if v is not None}, unmatched)


@dataclass(frozen=True)
class PushedRows:
    frame: pd.DataFrame  # training rows: entity keys, the features as served, target, time, FEEDBACK_ID_COLUMN
    read: int  # rows read from the push source's batch source
    duplicates: int  # rows of a prediction id already read (a push retried): left out


def feedback_frame(
    pushed: pd.DataFrame,
    join_keys: list[str],
    timestamp_field: str,
    timestamp_column: str,
    target: str,
    features: list[str],
) -> PushedRows:
    """Labelled production rows as training rows: the entity keys, the model's features **as
    served** (what the model saw when it predicted; a feature the row lacks is missing), the label as
    the target, the prediction time as ``timestamp_column`` (so the pipeline's window selects them by
    it) and the prediction id in ``FEEDBACK_ID_COLUMN`` (so the run counts them as feedback rows). A
    prediction id pushed twice (a push retried after a lost answer) counts once.

    >>> pushed = pd.DataFrame({"k": [1, 2, 1], "f": [0.5, None, 0.5], "label": [1, 0, 1],
    ...                        "prediction_id": ["a", "b", "a"], "event_timestamp": ["2026-12-01"] * 3})
    >>> rows = feedback_frame(pushed, ["k"], "event_timestamp", "t", "y", ["f", "g"])
    >>> rows.frame.columns.tolist(), rows.frame["y"].tolist(), rows.read, rows.duplicates
    (['k', 'f', 'g', 'y', 't', '__noria_prediction_id'], [1, 0], 3, 1)
    """
    missing = [c for c in (*join_keys, PUSHED_LABEL, PUSHED_PREDICTION_ID, timestamp_field) if c not in pushed.columns]
    if missing:
        raise DataError(f"the feedback push source's rows lack column(s) {', '.join(missing)}")
    unique = pushed.drop_duplicates(subset=[PUSHED_PREDICTION_ID], keep="first")
    out = pd.DataFrame({k: unique[k].to_numpy() for k in join_keys})
    for feature in features:
        if feature not in out.columns:
            out[feature] = unique[feature].to_numpy() if feature in unique.columns else float("nan")
    out[target] = unique[PUSHED_LABEL].to_numpy()
    out[timestamp_column] = parse_timestamps(unique.reset_index(drop=True), timestamp_field).to_numpy()
    out[FEEDBACK_ID_COLUMN] = unique[PUSHED_PREDICTION_ID].astype(str).to_numpy()
    return PushedRows(out, len(pushed), len(pushed) - len(unique))


def pushed_rows(feast: FeastData, timestamp_column: str, target: str, features: list[str]) -> PushedRows:
    """The rows model servers pushed to ``feast.feedback_push_source``, read through Feast's offline
    store (``pull_all_from_table_or_query`` on the batch source of the feature view the push source
    feeds), as training rows (:func:`feedback_frame`)."""
    assert feast.feedback_push_source
    FeatureStore = feature_store_class()  # noqa: N806
    from feast.data_source import PushSource
    name = feast.feedback_push_source
    try:
        store = FeatureStore(repo_path=repository_dir(feast.repository))
        views = [
            v for v in store.list_feature_views()
            if isinstance(v.stream_source, PushSource) and v.stream_source.name == name
        ]
        if not views:
            raise DataError(
                f"spec.data.feast.feedbackPushSource {name!r}: no feature view of {feast.repository} is fed by a "
                "push source of that name"
            )
        view = views[0]
        source = view.batch_source
        join_keys = list(view.join_keys)
        columns = [f.name for f in view.features if f.name not in join_keys]
        job = store._get_provider().offline_store.pull_all_from_table_or_query(  # noqa: SLF001 - Feast's reader
            config=store.config,
            data_source=source,
            join_key_columns=join_keys,
            feature_name_columns=columns,
            timestamp_field=source.timestamp_field,
            start_date=None,
            end_date=None,
        )
        pushed = job.to_df()
    except DataError:
        raise
    except Exception as exc:  # as historical_rows: any Feast error is a data error
        raise DataError(f"Feast repository {feast.repository}, push source {name}: {type(exc).__name__}: {exc}") from exc
    return feedback_frame(pushed, join_keys, source.timestamp_field, timestamp_column, target, features)
