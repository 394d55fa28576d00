"""The trainer's reading of labelled rows pushed to Feast (feast_source.feedback_frame, pure: runs on
pandas 3 without Feast): the features as served, the label as the target, the prediction time as the
pipeline's timestamp column, the prediction id as the feedback id, a retried push counted once."""

from __future__ import annotations

import pandas as pd
import pytest
from noria_trainer.data import FEEDBACK_ID_COLUMN, DataError
from noria_trainer.feast_source import feedback_frame

PUSHED = pd.DataFrame({
    "customer_id": [1, 2, 1],
    "tenure_months": [10.0, None, 10.0],
    "monthly_charges": [50.5, 60.0, 50.5],
    "prediction": [1, 0, 1],
    "label": [0, 1, 0],
    "prediction_id": ["r-0", "r-1", "r-0"],  # r-0 pushed twice: a push retried after its answer was lost
    "model_version": ["churn-v1"] * 3,
    "event_timestamp": pd.to_datetime(["2026-12-01T10:00:00Z", "2026-12-01T10:00:01Z", "2026-12-01T10:00:00Z"]),
})


def test_pushed_rows_become_training_rows_with_the_features_as_served() -> None:
    rows = feedback_frame(PUSHED, ["customer_id"], "event_timestamp", "label_time", "churned",
                          ["tenure_months", "monthly_charges", "support_calls"])
    frame = rows.frame
    assert (rows.read, rows.duplicates, len(frame)) == (3, 1, 2)
    assert frame.columns.tolist() == ["customer_id", "tenure_months", "monthly_charges", "support_calls",
                                      "churned", "label_time", FEEDBACK_ID_COLUMN]
    assert frame["customer_id"].tolist() == [1, 2]
    assert frame["tenure_months"].iloc[0] == 10.0 and pd.isna(frame["tenure_months"].iloc[1])  # served null
    assert frame["support_calls"].isna().all()  # a feature the rows lack (added to the service later): missing
    assert frame["churned"].tolist() == [0, 1]  # the label, not the prediction
    assert frame[FEEDBACK_ID_COLUMN].tolist() == ["r-0", "r-1"]
    assert frame["label_time"].iloc[1] == pd.Timestamp("2026-12-01T10:00:01Z")  # the prediction time, UTC
    assert "prediction" not in frame.columns and "model_version" not in frame.columns


def test_rows_without_the_sinks_columns_are_a_data_error() -> None:
    with pytest.raises(DataError, match="lack column\\(s\\) label"):
        feedback_frame(PUSHED.drop(columns=["label"]), ["customer_id"], "event_timestamp", "t", "y", ["f"])
