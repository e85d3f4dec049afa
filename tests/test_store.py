"""Parquet partitions and DuckDB loads are idempotent: reloading never duplicates a row."""

from datetime import datetime, timezone

import duckdb
import numpy as np
import pytest
import pyarrow as pa

from mmsa import pipeline, store
from mmsa.model import Prediction
from mmsa.schema import POST_SCHEMA


def _posts():
    rows = [
        {"post_id": "p1", "created_at": datetime(2026, 11, 20, 9, tzinfo=timezone.utc), "text": "great", "brand": "acme"},
        {"post_id": "p2", "created_at": datetime(2026, 11, 20, 23, tzinfo=timezone.utc), "text": "bad", "brand": "acme"},
        {"post_id": "p3", "created_at": datetime(2026, 11, 21, 0, 30, tzinfo=timezone.utc), "text": "ok", "brand": "zeta"},
    ]
    return pa.Table.from_pylist(rows, schema=POST_SCHEMA)


def _scored(version="m1"):
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    image = np.array([[0.5, 0.3, 0.2], [np.nan] * 3, [0.1, 0.1, 0.8]])
    pred = Prediction(probs=probs, text_probs=probs, image_probs=image)
    return pipeline.scored_table(_posts(), ["ok", "http_404", "ok"], pred, version, "run-1")


def test_scored_rows_carry_labels_scores_and_per_modality_predictions():
    rows = _scored().to_pylist()
    assert [r["label"] for r in rows] == ["positive", "negative", "neutral"]
    assert abs(rows[0]["sentiment_score"] - 0.7) < 1e-12 and abs(rows[1]["sentiment_score"] + 0.6) < 1e-12
    assert rows[1]["image_label"] is None and rows[1]["image_p_positive"] is None
    assert rows[2]["image_label"] == "negative" and rows[2]["text_label"] == "neutral"


def test_partitions_by_utc_date_and_rewrites_in_place(tmp_path):
    files = store.write_partitions(_scored(), tmp_path, "m1-key-00000")
    assert [f.parent.name for f in files] == ["date=2026-11-20", "date=2026-11-21"]
    again = store.write_partitions(_scored(), tmp_path, "m1-key-00000")
    assert again == files
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m1-key-00000.parquet"] * 2
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true)").fetchall()
    assert n == [(3,)]


def test_duckdb_upsert_keeps_one_row_per_post_and_model(tmp_path):
    files = store.write_partitions(_scored("m1"), tmp_path / "out", "a")
    files2 = store.write_partitions(_scored("m2"), tmp_path / "out", "b")
    db = tmp_path / "x.duckdb"
    with store.connect(db) as con:
        assert store.load_scored(con, files) == 3
        assert store.load_scored(con, files) == 3
        store.load_scored(con, files2)
        store.load_rejected(con, [{"post_id": None, "reason": "missing post_id", "raw": "{}", "line": 4}], "d.jsonl", "r1")
        store.load_rejected(con, [{"post_id": None, "reason": "missing post_id", "raw": "{}", "line": 4}], "d.jsonl", "r2")
    with duckdb.connect(str(db), read_only=True) as con:
        counts = con.sql("SELECT model_version, count(*), count(DISTINCT post_id) FROM post_sentiment GROUP BY 1 ORDER BY 1").fetchall()
        assert counts == [("m1", 3, 3), ("m2", 3, 3)]
        days = con.sql("SELECT post_id, day FROM post_sentiment WHERE model_version = 'm1' ORDER BY 1").fetchall()
        assert [str(d) for _, d in days] == ["2026-11-20", "2026-11-20", "2026-11-21"]
        assert con.sql("SELECT run_id FROM rejected_posts").fetchall() == [("r2",)]


class Killed(BaseException):
    """Stands for a SIGKILL arriving while DuckDB creates the database file."""


def test_a_run_killed_while_creating_the_database_leaves_no_unopenable_file(tmp_path, monkeypatch):
    """DuckDB makes the file before it writes the header; a kill in between must not brick later runs."""
    db, real_connect = tmp_path / "m.duckdb", duckdb.connect

    def killed_after_creating(path, *args, **kwargs):
        open(path, "wb").close()  # the file exists, its header not yet written
        raise Killed

    monkeypatch.setattr(store.duckdb, "connect", killed_after_creating)
    with pytest.raises(Killed):
        store.connect(db)
    assert not db.exists()
    monkeypatch.setattr(store.duckdb, "connect", real_connect)
    with store.connect(db) as con:  # the rerun replaces the leftover and builds the schema
        assert con.execute("SELECT count(*) FROM scored_posts").fetchone() == (0,)
    assert [p.name for p in tmp_path.iterdir()] == ["m.duckdb"]
