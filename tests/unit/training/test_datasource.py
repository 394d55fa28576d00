"""Observing a data source: rows from parquet footers and CSV lines, a fingerprint of the files."""

from __future__ import annotations

import pandas as pd
from noria.training import datasource


def test_parquet_folder_rows_and_fingerprint_change_with_a_new_partition(tmp_path):
    pd.DataFrame({"x": range(10)}).to_parquet(tmp_path / "part-0.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    first = datasource.observe(f"file://{tmp_path}/", "parquet")
    assert first.rows == 10 and first.error is None
    pd.DataFrame({"x": range(5)}).to_parquet(tmp_path / "part-1.parquet")
    second = datasource.observe(f"file://{tmp_path}/", "parquet")
    assert second.rows == 15 and second.fingerprint != first.fingerprint


def test_csv_file_and_glob(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n3,4\n")
    (tmp_path / "b.csv").write_text("x,y\n5,6\n")
    assert datasource.observe(f"file://{tmp_path}/a.csv", "csv").rows == 2
    assert datasource.observe(f"file://{tmp_path}/*.csv", "csv").rows == 3


def test_missing_source_is_an_error_in_the_observation(tmp_path):
    obs = datasource.observe(f"file://{tmp_path}/nothing/", "parquet")
    assert obs.error and obs.rows is None
