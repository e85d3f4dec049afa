"""mmsa.storage on fsspec's in-memory filesystem: which locations are remote, whole-file writes, listing a dump."""

from pathlib import Path

import pyarrow as pa

from mmsa import storage


def test_which_locations_are_object_storage():
    assert storage.is_remote("s3://bucket/out") and storage.is_remote("memory://x") and storage.is_remote("gs://b/k")
    for local in ("/data/out", "out", Path("/data"), "file:///data/out", "https://cdn.example.com/d.jsonl"):
        assert not storage.is_remote(local)
    assert isinstance(storage.path("/data/out"), Path) and storage.path("file:///data/out") == Path("/data/out")
    assert str(storage.path("s3://bucket/out") / "_work" / "k") == "s3://bucket/out/_work/k"


def test_tables_and_bytes_round_trip_and_a_dump_is_listed_and_downloaded(tmp_path):
    base = "memory://mmsa-storage-test"
    table = pa.table({"post_id": ["a", "b"], "n": [1, 2]})
    storage.write_table(table, f"{base}/out/date=2026-11-16/x.parquet")
    assert storage.read_table(f"{base}/out/date=2026-11-16/x.parquet").equals(table)
    storage.write_bytes(f"{base}/dumps/day-1.jsonl", b'{"post_id": "a"}\n')
    storage.write_bytes(f"{base}/dumps/day-2.jsonl", b'{"post_id": "b"}\n')
    storage.write_bytes(f"{base}/dumps/.hidden.jsonl", b"")
    assert [p.name for p in storage.list_files(f"{base}/dumps")] == ["day-1.jsonl", "day-2.jsonl"]
    assert [p.name for p in storage.list_files(f"{base}/dumps/day-2*")] == ["day-2.jsonl"]
    local = storage.download(storage.list_files(f"{base}/dumps/day-1.jsonl")[0], tmp_path / "dl")
    assert local.read_bytes() == b'{"post_id": "a"}\n' and not list((tmp_path / "dl").rglob(".*"))
    storage.write_bytes(f"{base}/parts/a/part.jsonl", b'{"post_id": "pa"}\n')
    storage.write_bytes(f"{base}/parts/b/part.jsonl", b'{"post_id": "pb"}\n')
    parts = [storage.download(f, tmp_path / "dl") for f in storage.list_files(f"{base}/parts/*/part.jsonl")]
    assert [p.name for p in parts] == ["part.jsonl"] * 2  # one name, two files: neither overwrites the other
    assert [p.read_bytes() for p in parts] == [b'{"post_id": "pa"}\n', b'{"post_id": "pb"}\n']
    # Local writes stay whole-file renames, leaving no temporary file behind.
    storage.write_table(table, tmp_path / "local" / "t.parquet")
    assert storage.read_table(tmp_path / "local" / "t.parquet").equals(table)
    assert [p.name for p in (tmp_path / "local").iterdir()] == ["t.parquet"]
