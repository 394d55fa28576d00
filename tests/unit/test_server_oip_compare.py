"""How the router compares a shadow's answer with the primary's (noria_server.oip.predictions_of / compare)."""

from __future__ import annotations

from noria_server.oip import compare, predictions_of


def test_compare_rows_and_extract_predictions() -> None:
    assert compare([1, 0, 1], [1, 1, 1]) == (2, 1)
    assert compare([0.5, 1.0], [0.5 * (1 + 1e-9), 1.1]) == (1, 1)
    assert compare(["a", "b"], ["a"]) == (1, 1)
    body = b'{"outputs": [{"name": "predict_proba", "data": [0.1]}, {"name": "predict", "data": [3, 4]}]}'
    assert predictions_of(body) == [3, 4]
    assert predictions_of(b'{"error": "x"}') is None and predictions_of(b"<html>") is None


def test_predictions_of_a_binary_answer_that_does_not_add_up_is_none() -> None:
    header = b'{"outputs": [{"name": "predict", "shape": [2], "parameters": {"binary_data_size": 16}}]}'
    assert predictions_of(header + bytes(16)) is None  # no datatype
    typed = header.replace(b'"shape"', b'"datatype": "INT64", "shape"')
    assert predictions_of(typed + (7).to_bytes(8, "little") + (9).to_bytes(8, "little")) == [7, 9]
    assert predictions_of(typed.replace(b"16", b"12") + bytes(12)) is None  # not whole INT64 values
