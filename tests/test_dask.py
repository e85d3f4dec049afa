"""Scale-out: the score flow on a real 2-process Dask LocalCluster gives the default runner's results."""

from contextlib import contextmanager

import duckdb
import pytest

from mmsa import cli
from mmsa.demo import make_dump, serve_folder


@contextmanager
def one_torch_thread():
    """Run as Dask workers do (Dask starts them with OMP_NUM_THREADS=1): float32 sums split over 2 threads
    instead differ in the 7th decimal (seen: 1.1e-6), which is not what this test is about."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rows(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT post_id, label, image_status, p_positive, p_neutral, p_negative, text_p_positive, "
                           "image_p_positive FROM post_sentiment ORDER BY post_id").fetchall()


@pytest.mark.slow  # ~90 s here: each worker process imports torch and loads the model on one core
def test_dask_cluster_scores_like_the_thread_runner(prefect_harness, tmp_path):
    """Shards scored on 2 worker processes (model loaded once in each worker that scored) equal the threads' results."""
    from distributed import Client, LocalCluster

    site = tmp_path / "site"
    with serve_folder(site) as base:
        make_dump(site, base, n_posts=24)
        common = [f"{base}/posts.jsonl", "--shard-size", "8", "--allow-hosts", "127.0.0.1", "--cache", str(tmp_path / "cache"),
                  "--quiet"]
        with one_torch_thread():
            assert cli.main(["score", *common, "--db", str(tmp_path / "t.duckdb"), "--out", str(tmp_path / "t")]) == 0
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            assert cli.main(["score", *common, "--db", str(tmp_path / "d.duckdb"), "--out", str(tmp_path / "d"),
                             "--runner", "dask", "--dask-address", cluster.scheduler_address]) == 0
            loaded = client.run(lambda: sorted(v.version for v in __import__("mmsa.model").model._CACHE.values()))

    threads, dask = _rows(tmp_path / "t.duckdb"), _rows(tmp_path / "d.duckdb")
    assert len(threads) == 24 and [r[:3] for r in dask] == [r[:3] for r in threads]
    for a, b in zip(threads, dask):
        assert b[3:] == pytest.approx(a[3:], abs=1e-6, nan_ok=True)
    assert sum(len(v) == 1 for v in loaded.values()) >= 1 and all(len(v) <= 1 for v in loaded.values())
    with duckdb.connect(str(tmp_path / "d.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*), sum(posts) FROM run_shards WHERE NOT skipped").fetchone() == (4, 24)  # 3 shards of 8, and one holding only the rejected row
