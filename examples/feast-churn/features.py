"""Feature definitions of the churn example: one entity, one Parquet source, one feature view and
the feature service a TrainingPipeline names (``spec.data.feast.featureService: churn_v1``).

``feast apply`` in this folder writes them to the registry (data/registry.db). The source's
``event_timestamp`` is when a value became known; the training set takes, for each label, the
newest value known at the label's time and no later one (docs/training-feast.md)."""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Float64, Int64
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
