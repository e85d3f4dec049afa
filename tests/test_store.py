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
        bad = [{"post_id": None, "reason": "missing post_id", "raw": "{}", "line": 4}]
        assert store.load_rejected(con, [bad, bad], "d.jsonl", "k1", "h1", "r1") == 2  # one batch per shard
        store.load_rejected(con, [bad], "./d.jsonl", "k1", "h1", "r2")  # the same bytes by another path: replaced
        store.load_rejected(con, [bad], "d.jsonl", "k2", "h2", "r3")  # next night's dump at the same path: kept beside
        store.load_rejected(con, iter([bad]), "d.jsonl", "k3", "h2", "r4")  # that one grown (same first line): replaced
    with duckdb.connect(str(db), read_only=True) as con:
        counts = con.sql("SELECT model_version, count(*), count(DISTINCT post_id) FROM post_sentiment GROUP BY 1 ORDER BY 1").fetchall()
        assert counts == [("m1", 3, 3), ("m2", 3, 3)]
        days = con.sql("SELECT post_id, day FROM post_sentiment WHERE model_version = 'm1' ORDER BY 1").fetchall()
        assert [str(d) for _, d in days] == ["2026-11-20", "2026-11-20", "2026-11-21"]
        assert con.sql("SELECT run_id FROM rejected_posts ORDER BY 1").fetchall() == [("r2",), ("r4",)]


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


OLD_SCORED_POSTS = """
CREATE TABLE scored_posts (post_id VARCHAR, created_at TIMESTAMPTZ, text VARCHAR, image_url VARCHAR, brand VARCHAR,
  source VARCHAR, lang VARCHAR, author VARCHAR, likes BIGINT, shares BIGINT, replies BIGINT, extra VARCHAR,
  image_status VARCHAR, label VARCHAR, p_positive DOUBLE, p_neutral DOUBLE, p_negative DOUBLE, sentiment_score DOUBLE,
  text_label VARCHAR, text_p_positive DOUBLE, text_p_neutral DOUBLE, text_p_negative DOUBLE,
  image_label VARCHAR, image_p_positive DOUBLE, image_p_neutral DOUBLE, image_p_negative DOUBLE,
  model_version VARCHAR, run_id VARCHAR, scored_at TIMESTAMPTZ, PRIMARY KEY (post_id, model_version));
CREATE VIEW post_sentiment AS SELECT * FROM scored_posts;
CREATE TABLE rejected_posts (post_id VARCHAR, reason VARCHAR, raw VARCHAR, dump VARCHAR, line BIGINT, run_id VARCHAR,
  rejected_at TIMESTAMPTZ);
INSERT INTO scored_posts VALUES
  ('a', TIMESTAMPTZ '2026-11-20 10:00:00+00', 'hi', 'https://i.example/a.jpg', 'acme', NULL, NULL, NULL, 1, 0, 0, NULL,
   'ok', 'positive', 0.8, 0.1, 0.1, 0.7, 'positive', 0.7, 0.2, 0.1, 'positive', 0.9, 0.05, 0.05, 'm1', 'r1', now()),
  ('b', TIMESTAMPTZ '2026-11-20 11:00:00+00', 'yo', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   'no_image', 'neutral', 0.2, 0.6, 0.2, 0.0, 'neutral', 0.2, 0.6, 0.2, NULL, NULL, NULL, NULL, 'm1', 'r1', now());
"""


def test_a_database_of_one_image_and_one_brand_per_post_is_converted_on_connect(tmp_path):
    db = tmp_path / "old.duckdb"
    with duckdb.connect(str(db)) as con:
        con.execute(OLD_SCORED_POSTS)
    for _ in range(2):  # the second connect finds it current and leaves it alone
        store.connect(db).close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.sql("SELECT post_id, image_urls, brands, image_status, label FROM scored_posts ORDER BY 1").fetchall() == [
            ("a", ["https://i.example/a.jpg"], ["acme"], "ok", "positive"), ("b", [], [], "no_image", "neutral")]
        assert con.sql("SELECT post_id, brand FROM post_sentiment ORDER BY 1").fetchall() == [("a", "acme"), ("b", None)]
        assert con.sql("SELECT post_id, position, image_url, image_status, image_label, image_p_positive FROM post_images"
                       ).fetchall() == [("a", 0, "https://i.example/a.jpg", "ok", "positive", 0.9)]
        assert "file" in [r[0] for r in con.sql("DESCRIBE rejected_posts").fetchall()]


def test_combine_averages_a_posts_usable_images_and_falls_back_to_its_text():
    rows = pipeline.model_rows([["u1", "u2"], ["u3", "u4"], [], ["u5"]])
    assert rows == [(0, 0, "u1"), (0, 1, "u2"), (1, 0, "u3"), (1, 1, "u4"), (2, 0, None), (3, 0, "u5")]
    text = np.tile([0.5, 0.3, 0.2], (6, 1))
    fused = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    image = np.array([[0.8, 0.1, 0.1], [0.4, 0.4, 0.2], [np.nan] * 3, [0.0, 0.2, 0.8], [np.nan] * 3, [np.nan] * 3])
    statuses = ["ok", "ok", "http_404", "ok", "no_image", "timeout"]
    post_status, pred, images = pipeline.combine(4, rows, statuses, Prediction(fused, text, image))
    assert post_status == ["ok", "ok", "no_image", "timeout"]
    np.testing.assert_allclose(pred.probs, [[0.7, 0.175, 0.125], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
    np.testing.assert_allclose(pred.image_probs[:2], [[0.6, 0.25, 0.15], [0.0, 0.2, 0.8]])
    assert np.isnan(pred.image_probs[2:]).all()
    np.testing.assert_allclose(pred.text_probs, np.tile([0.5, 0.3, 0.2], (4, 1)))
    assert [[(i["position"], i["image_url"], i["image_status"], i["image_label"]) for i in post] for post in images] == [
        [(0, "u1", "ok", "positive"), (1, "u2", "ok", "positive")],
        [(0, "u3", "http_404", None), (1, "u4", "ok", "negative")], [], [(0, "u5", "timeout", None)]]
