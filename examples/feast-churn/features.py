"""Feature definitions of the churn example: one entity, one Parquet source, one feature view and
the feature service a TrainingPipeline names (``spec.data.feast.featureService: churn_v1``); and the
push source the model servers write labelled production rows to (``churn_feedback``).

``feast apply`` in this folder writes them to the registry (data/registry.db). The source's
``event_timestamp`` is when a value became known; the training set takes, for each label, the
newest value known at the label's time and no later one (docs/training-feast.md)."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.INT64,
                  description="A subscriber; the entity source's customer_id column")

# Relative to this folder: the repository moves with its data (copied into the store as one folder).
customer_stats_source = FileSource(
    name="customer_stats_source",
    path="data/customer_stats.parquet",
    timestamp_field="event_timestamp",
)

customer_stats = FeatureView(
    name="customer_stats",
    entities=[customer],
    ttl=timedelta(days=90),  # a value older than this at the label's time is no value (null)
    schema=[
        Field(name="customer_id", dtype=Int64),
        Field(name="tenure_months", dtype=Int64),
        Field(name="monthly_charges", dtype=Float64),
        Field(name="support_calls", dtype=Int64),
    ],
    source=customer_stats_source,
    online=True,
)

churn_v1 = FeatureService(name="churn_v1", features=[customer_stats])

# Labelled production rows, written by the model servers (a Rollout's
# spec.onlineFeatures.feast.feedbackPushSource) through `feast serve`'s POST /push with "to": "offline":
# Feast's file offline store appends them to the batch source's Parquet file, which must exist with
# exactly these columns (make_data.write creates it empty). A TrainingPipeline selects them with
# spec.data.feast.feedbackPushSource (docs/training-feast.md, "Labelled production rows back into Feast").
churn_feedback_source = PushSource(
    name="churn_feedback",
    batch_source=FileSource(
        name="churn_feedback_file",
        path="data/churn_feedback.parquet",
        timestamp_field="event_timestamp",  # when the model server predicted (the request time)
    ),
)

churn_feedback = FeatureView(
    name="churn_feedback",
    entities=[customer],
    ttl=timedelta(days=365),
    schema=[
        Field(name="customer_id", dtype=Int64),
        # the features as the model received them (after the online fill), null where missing
        Field(name="tenure_months", dtype=Float64),
        Field(name="monthly_charges", dtype=Float64),
        Field(name="support_calls", dtype=Float64),
        Field(name="prediction", dtype=Int64),
        Field(name="label", dtype=Int64),
        Field(name="prediction_id", dtype=String),
        Field(name="model_version", dtype=String),
    ],
    source=churn_feedback_source,
    online=False,  # training data, not served
)
