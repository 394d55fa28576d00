"""The pure parts of the trainer's Feast source (noria_trainer.feast_source), on this venv's
pandas 3 (Feast itself runs on pandas 2 in .venv-feast: tests/integration/test_feast_training.py)."""

from __future__ import annotations

import pandas as pd
import pytest
from noria_trainer.data import DataError
from noria_trainer.feast_source import (
    FEAST_TIMESTAMP,
    ROW_COLUMN,
    definitions_digest,
    entity_frame,
    feature_columns,
    historical_rows,
    repository_dir,
    with_every_entity_row,
)
from noria_trainer.spec import FeastData


def test_feature_columns_are_the_feature_names_and_a_name_from_two_views_is_refused() -> None:
    assert feature_columns(["a:x", "b:y"]) == ["x", "y"]
    with pytest.raises(DataError, match="named by two feature views"):
        feature_columns(["a:x", "b:x"])


def test_the_digest_changes_with_any_definition_and_not_with_order() -> None:
    base = definitions_digest({"a": b"1", "b": b"2"}, b"s")
    assert base == definitions_digest({"b": b"2", "a": b"1"}, b"s")
    assert (
        len(
            {
                base,
                definitions_digest({"a": b"1", "b": b"3"}, b"s"),
                definitions_digest({"a": b"1", "b": b"2"}, None),
            }
        )
        == 3
    )
    # Lengths are part of what is hashed: moving a byte between a name and a spec is another digest.
    assert definitions_digest({"ab": b"c"}, None) != definitions_digest({"a": b"bc"}, None)


def test_entity_rows_carry_their_time_as_feast_reads_it_and_their_position() -> None:
    rows = entity_frame(pd.DataFrame({"k": [3, 1], "when": ["2026-01-02T00:00:00Z", "2026-01-01"]}), "when")
    assert list(rows.columns) == ["k", FEAST_TIMESTAMP, ROW_COLUMN]
    assert str(rows[FEAST_TIMESTAMP].dt.tz) == "UTC" and rows[ROW_COLUMN].tolist() == [0, 1]


def test_a_second_time_column_named_like_feasts_is_refused() -> None:
    with pytest.raises(DataError, match="Feast would read the wrong time"):
        entity_frame(pd.DataFrame({"when": ["2026-01-01"], FEAST_TIMESTAMP: ["2026-01-01"]}), "when")


def test_an_entity_row_feast_left_out_comes_back_with_nulls_in_the_sources_order() -> None:
    rows = pd.DataFrame({"k": [7, 8, 9], ROW_COLUMN: [0, 1, 2]})
    found = pd.DataFrame(
        {ROW_COLUMN: [2, 0], "k": [9, 7], "f": [1.5, 2.5]}
    )  # Feast's own order, row 1 missing
    out, unmatched = with_every_entity_row(rows, found, ["f"])
    assert out["k"].tolist() == [7, 8, 9] and unmatched == 1
    assert out["f"].tolist()[0] == 2.5 and pd.isna(out["f"].tolist()[1]) and out["f"].tolist()[2] == 1.5


def test_a_row_returned_twice_is_refused() -> None:
    rows = pd.DataFrame({"k": [7], ROW_COLUMN: [0]})
    with pytest.raises(DataError, match="twice"):
        with_every_entity_row(rows, pd.DataFrame({ROW_COLUMN: [0, 0], "f": [1.0, 2.0]}), ["f"])


def test_only_a_file_repository_is_read() -> None:
    assert repository_dir("file:///store/datasets/repo") == "/store/datasets/repo"
    with pytest.raises(DataError, match="only file:// repositories"):
        repository_dir("s3://bucket/repo")


def test_without_feast_installed_a_feast_pipeline_fails_naming_the_image() -> None:
    pytest.importorskip("pandas", minversion="3")  # this venv: Feast cannot be installed next to pandas 3
    with pytest.raises(DataError, match="noria-trainer-feast"):
        historical_rows(pd.DataFrame({"t": ["2026-01-01"]}), "t", FeastData("file:///r", "s", None))
