"""`mmsa fetch DUMP --cache DIR`: the status table, and --retry-failed re-fetching only what may heal."""

import json

import pyarrow.parquet as pq

from imageserver import encode, image_server, send, textured_image  # noqa: F401  (fixture)
from mmsa.cli import main
from mmsa.images.cache import ImageCache
from mmsa.images.status import STATUS_TABLE_SCHEMA


def write_dump(path, urls):
    rows = [{"post_id": f"p{n}", "created_at": "2026-01-01T00:00:00Z", "text": "hi", "image_url": url} for n, url in enumerate(urls)]
    rows.append({"post_id": "", "created_at": "2026-01-01T00:00:00Z", "text": "no id"})  # invalid row: rejected
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")


def test_fetch_command_writes_one_row_per_post_and_retries_only_retryable(image_server, tmp_path, capsys):
    """The table has every valid post once; --retry-failed hits only the retryable failure and updates its row."""
    (image_server.root / "a.jpg").write_bytes(encode(textured_image(320, 240), "JPEG"))
    flaky_png = encode(textured_image(90, 90), "PNG")
    image_server.route("/flaky", send(500), send(500), send(500), send(200, flaky_png, "image/png"))
    urls = [image_server.url("a.jpg"), image_server.url("missing.jpg"), image_server.url("flaky"), None, "ftp://x/y"]
    dump = tmp_path / "posts.jsonl"
    write_dump(dump, urls)
    cache_dir = tmp_path / "cache"
    argv = ["fetch", str(dump), "--cache", str(cache_dir), "--allow-hosts", "127.0.0.1", "--quiet"]

    assert main(argv) == 0
    status_path = cache_dir / "status" / "posts.parquet"
    table = pq.read_table(status_path)
    assert table.schema.equals(STATUS_TABLE_SCHEMA)
    assert table["post_id"].to_pylist() == ["p0", "p1", "p2", "p3", "p4"]
    assert table["status"].to_pylist() == ["ok", "http_404", "http_5xx", "no_image", "unsupported_scheme"]
    assert table["attempts"].to_pylist()[:3] == [1, 1, 3]
    out = capsys.readouterr().out
    assert "1 dump rows rejected" in out and "http_5xx 1" in out
    hits_before = len(image_server.hits)

    assert main(argv + ["--retry-failed"]) == 0
    again = pq.read_table(status_path)
    assert again["status"].to_pylist() == ["ok", "http_404", "ok", "no_image", "unsupported_scheme"]
    assert image_server.hits[hits_before:] == ["/flaky"]
    assert ImageCache(cache_dir).load(again["image_key"][2].as_py()) == flaky_png


def test_fetch_reads_other_exports_through_a_mapping_one_row_per_image(image_server, tmp_path, capsys):
    """`mmsa fetch --map ...`: a post's images each get their own row, in the post's order, up to the cap."""
    for name in ("a.jpg", "b.jpg"):
        (image_server.root / name).write_bytes(encode(textured_image(64, 48), "JPEG"))
    rows = [{"id": "x1", "ts": 1763632800, "body": "two", "media": [{"src": image_server.url(n)} for n in ("a.jpg", "gone.jpg", "b.jpg")]},
            {"id": "x2", "ts": 1763632800, "body": "none", "media": []}]
    dump = tmp_path / "export.jsonl"
    dump.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["fetch", str(dump), "--cache", str(tmp_path / "c"), "--allow-hosts", "127.0.0.1", "--quiet",
                 "--map", "post_id=id", "--map", "created_at=ts", "--map", "text=body", "--map", "image_urls=media[].src",
                 "--max-images", "2"]) == 0
    table = pq.read_table(tmp_path / "c" / "status" / "export.parquet")
    assert list(zip(table["post_id"].to_pylist(), table["status"].to_pylist())) == [
        ("x1", "ok"), ("x1", "http_404"), ("x2", "no_image")]
    out = capsys.readouterr().out  # posts counted as posts, images as images (it said "3 posts, 2 with an image_url")
    assert out.startswith("2 posts, 1 with images; 2 images in ") and ", ok 50.0%" in out
