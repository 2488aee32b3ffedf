"""`records_batch`: a page of `_source` documents as one Arrow record batch, nothing lost."""

from __future__ import annotations

import json

import pytest

from pipestate.connectors.search import records_batch

pa = pytest.importorskip("pyarrow")


def test_a_column_per_top_level_field_over_every_document() -> None:
    batch = records_batch([{"a": 1, "t": "2026-01-01T00:00:00Z"}, {"a": 2, "b": {"c": [1, 2]}}])
    assert batch.num_rows == 2 and batch.schema.names == ["a", "t", "b"]
    assert batch.column("t").to_pylist() == ["2026-01-01T00:00:00Z", None]  # text stays text
    assert pa.types.is_struct(batch.schema.field("b").type)
    assert batch.to_pylist()[1] == {"a": 2, "t": None, "b": {"c": [1, 2]}}


def test_a_field_arrow_cannot_type_becomes_json_text_and_the_others_stay_typed() -> None:
    batch = records_batch([{"a": 1, "x": 5}, {"a": "one", "x": 6}, {"a": {"k": 1}, "x": 7}, {"x": 8}])
    assert batch.schema.field("x").type == pa.int64()
    assert batch.column("a").to_pylist() == ["1", '"one"', '{"k": 1}', None]


def test_integers_beyond_64_bits_and_empty_objects_survive_as_json_text() -> None:
    batch = records_batch([{"big": 2**70, "empty": {}, "n": 1}])
    assert json.loads(batch.column("big")[0].as_py()) == 2**70
    assert batch.column("empty").to_pylist() == ["{}"] and batch.column("n").to_pylist() == [1]


def test_documents_without_fields_still_count() -> None:
    assert records_batch([{}, {}, {}]).num_rows == 3
