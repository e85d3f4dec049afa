"""End to end, one test per source format: a realistic compressed dump with several images per post,
escaped URLs and epoch times, scored by `mmsa score` (the real Prefect flow) with its images served by a
real HTTP server on 127.0.0.1, into a real DuckDB file; every post, image and brand row is checked."""

import gzip
import json
from datetime import datetime, timezone

import duckdb
import pytest
import zstandard

from imageserver import encode, image_server, send, textured_image  # noqa: F401  (fixture)
from mmsa import cli

BRANDS = {"acme": {"keywords": ["acme"], "hashtags": ["#acme"], "handles": ["@acmecorp"]},
          "globex": {"keywords": ["globex"], "regexes": [r"\bglobex ?(one|pro)\b"]}}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _zst(path, records):
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(_jsonl(records)))
    return path


def _gz(path, records):
    path.write_bytes(gzip.compress(_jsonl(records)))
    return path


def _pictures(server, *names: str) -> dict[str, str]:
    """Write a distinct JPEG per name under the server's root; their URLs by name."""
    for n, name in enumerate(names):
        target = server.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode(textured_image(96, 72, seed=n + 1), "JPEG"))
    return {name: server.url(name) for name in names}


def _unescaped_only(body: bytes):
    """A picture served only when the query arrives decoded: `&amp;` left in the URL gets a 404."""
    def handler(request):
        (send(404, b"escaped", "text/plain") if "amp;" in request.path else send(200, body, "image/jpeg"))(request)
    return handler


def _score(dump, tmp_path, *extra) -> duckdb.DuckDBPyConnection:
    brands = tmp_path / "brands.yaml"
    brands.write_text(json.dumps(BRANDS))  # JSON is YAML
    db = tmp_path / "m.duckdb"
    assert cli.main(["score", str(dump), "--db", str(db), "--out", str(tmp_path / "out"), "--shard-size", "2",
                     "--allow-hosts", "127.0.0.1", "--brands", str(brands), *extra]) == 0
    return duckdb.connect(str(db), read_only=True)


def _check(con, posts: dict, rejected: list[str], not_posts: dict):
    """posts: post_id -> (created_at, text, brands, [(image_url, image_status), ...])."""
    got_brands = sorted(con.sql("SELECT post_id, brand FROM post_sentiment").fetchall(), key=str)
    assert got_brands == sorted(((pid, b) for pid, (_, _, brands, _) in posts.items() for b in brands or [None]), key=str)
    scored = {r[0]: r[1:] for r in con.sql(
        "SELECT post_id, created_at, text, image_status, image_p_positive, p_positive + p_neutral + p_negative, "
        "text_label FROM scored_posts").fetchall()}
    assert sorted(scored) == sorted(posts)
    images = {}
    for pid, pos, url, status, *probs in con.sql(
            "SELECT post_id, position, image_url, image_status, image_p_positive, image_p_neutral, image_p_negative "
            "FROM post_images ORDER BY post_id, position").fetchall():
        images.setdefault(pid, []).append((pos, url, status, probs))
    for pid, (created_at, text, _, expected_images) in posts.items():
        at, got_text, summary, image_p_positive, total, text_label = scored[pid]
        assert (at, got_text) == (created_at, text), pid
        assert abs(total - 1) < 1e-6 and text_label in ("positive", "neutral", "negative")
        rows = images.get(pid, [])
        assert [(pos, url, status) for pos, url, status, _ in rows] == [
            (k, url, status) for k, (url, status) in enumerate(expected_images)], pid
        for _, _, status, probs in rows:  # each image's own prediction, only where it was usable
            assert (None not in probs and abs(sum(probs) - 1) < 1e-6) if status == "ok" else probs == [None] * 3
        usable = [probs[0] for _, _, status, probs in rows if status == "ok"]
        statuses = [status for _, status in expected_images]
        assert summary == ("ok" if "ok" in statuses else statuses[0] if statuses else "no_image"), pid
        if usable:  # the post's image side: the mean of its usable images
            assert image_p_positive == pytest.approx(sum(usable) / len(usable))
        else:
            assert image_p_positive is None
    assert sorted(r[0] for r in con.sql("SELECT reason FROM rejected_posts").fetchall()) == sorted(rejected)
    (runs,) = con.sql("SELECT posts_in, posts_scored, posts_rejected, not_posts FROM runs").fetchall()
    assert runs[:3] == (len(posts) + len(rejected), len(posts), len(rejected))
    assert json.loads(runs[3]) == not_posts


def test_reddit_zst_files_as_one_dump_with_galleries(prefect_harness, image_server, tmp_path):
    urls = _pictures(image_server, "r/a.jpg", "r/b.jpg", "r/c.jpg", *(f"r/d{n}.jpg" for n in range(5)))
    escaped = image_server.route("/r/q.jpg", _unescaped_only((image_server.root / "r/a.jpg").read_bytes()))
    gone = image_server.url("r/gone.jpg")
    gallery = {"id": "g1", "created_utc": "1763632800", "title": "Acme &amp; Globex haul", "selftext": "so good",
               "author": "u1", "subreddit": "shopping", "score": 12, "num_comments": 3, "is_gallery": True,
               "media_metadata": {"m3": {"status": "valid", "e": "Image", "s": {"u": urls["r/b.jpg"]}},
                                  "m1": {"status": "valid", "e": "Image", "s": {"u": escaped + "?width=640&amp;s=abc"}},
                                  "m2": {"status": "valid", "e": "Image", "s": {"u": gone}}},
               "gallery_data": {"items": [{"media_id": "m1"}, {"media_id": "m2"}, {"media_id": "m3"}]}}
    link = {"id": "l1", "created_utc": 1763636400, "title": "meh day", "selftext": "ask @acmecorp why", "url": urls["r/c.jpg"],
            "preview": {"images": [{"source": {"url": urls["r/c.jpg"] + "?auto=webp&amp;s=1"}}]}}
    comment = {"id": "c1", "body": "acme support is nice", "link_id": "t3_g1", "created_utc": 1763636500}
    removed = {"id": "c2", "body": "[removed]", "link_id": "t3_g1", "created_utc": 1763636500}
    selfpost = {"id": "s1", "created_utc": 1763640000.0, "title": "globex pro thoughts", "selftext": "[deleted]"}
    untagged = {"id": "u1", "created_utc": "1763643600", "title": "sunset", "selftext": "",
                "media_metadata": {f"d{n}": {"status": "valid", "s": {"u": urls[f"r/d{n}.jpg"]}} for n in range(5)},
                "gallery_data": {"items": [{"media_id": f"d{n}"} for n in range(5)]}}
    folder = tmp_path / "dumps"
    folder.mkdir()
    _zst(folder / "RS_2025-11a.jsonl.zst", [gallery, link, comment, removed])
    _zst(folder / "RS_2025-11b.jsonl.zst", [link, selfpost, untagged, {"id": "x9", "title": "no time"}])
    with _score(f"{folder}/*.jsonl.zst", tmp_path, "--source-format", "reddit") as con:
        _check(con, {
            "t3_g1": (utc(2025, 11, 20, 10), "Acme & Globex haul\n\nso good", ["acme", "globex"],
                      [(escaped + "?width=640&s=abc", "ok"), (gone, "http_404"), (urls["r/b.jpg"], "ok")]),
            "t3_l1": (utc(2025, 11, 20, 11), "meh day\n\nask @acmecorp why", ["acme"], [(urls["r/c.jpg"], "ok")]),
            "t1_c1": (utc(2025, 11, 20, 11, 1, 40), "acme support is nice", ["acme"], []),
            "t3_s1": (utc(2025, 11, 20, 12), "globex pro thoughts", ["globex"], []),
            "t3_u1": (utc(2025, 11, 20, 13), "sunset", [], [(urls[f"r/d{n}.jpg"], "ok") for n in range(4)]),
        }, ["duplicate post_id (first seen at RS_2025-11a.jsonl.zst line 2)", "missing created_at"],
            {"reddit: removed or deleted": 1})
        extra = json.loads(con.execute("SELECT extra FROM scored_posts WHERE post_id = 't3_u1'").fetchone()[0])
        assert extra["images_dropped"] == 1
    assert image_server.hit_count("/r/q.jpg") == 1


def test_x_v2_pages_gzipped(prefect_harness, image_server, tmp_path):
    urls = _pictures(image_server, "x/1.jpg", "x/2.jpg", "x/v.jpg")
    gone = image_server.url("x/gone.jpg")
    page = {"data": [
        {"id": "101", "text": "Loving #acme &amp; friends", "created_at": "2026-11-20T10:00:00.000Z", "author_id": "9",
         "lang": "en", "attachments": {"media_keys": ["3_1", "3_2"]},
         "public_metrics": {"like_count": 4, "retweet_count": 1, "reply_count": 0, "quote_count": 0}},
        {"id": "102", "text": "globex one broke", "created_at": "2026-11-20T11:00:00Z", "author_id": "9",
         "attachments": {"media_keys": ["7_v", "3_g"]}},
    ], "includes": {"media": [
        {"media_key": "3_1", "type": "photo", "url": urls["x/1.jpg"]},
        {"media_key": "3_2", "type": "photo", "url": urls["x/2.jpg"]},
        {"media_key": "7_v", "type": "video", "preview_image_url": urls["x/v.jpg"]},
        {"media_key": "3_g", "type": "photo", "url": gone}], "users": [{"id": "9", "username": "alice"}]}}
    later = {"data": [{"id": "103", "text": "just a day", "created_at": "2026-11-20T12:00:00.000Z"},
                      {"id": "104", "text": "no time"}]}
    dump = _gz(tmp_path / "tweets.jsonl.gz", [page, {"errors": [{"title": "Not Found Error"}]}, later])
    with _score(dump, tmp_path, "--source-format", "x-v2") as con:
        _check(con, {
            "101": (utc(2026, 11, 20, 10), "Loving #acme & friends", ["acme"], [(urls["x/1.jpg"], "ok"), (urls["x/2.jpg"], "ok")]),
            "102": (utc(2026, 11, 20, 11), "globex one broke", ["globex"], [(urls["x/v.jpg"], "ok"), (gone, "http_404")]),
            "103": (utc(2026, 11, 20, 12), "just a day", [], []),
        }, ["missing created_at"], {"x-v2: error page": 1})
        assert con.sql("SELECT author, likes, shares FROM scored_posts WHERE post_id = '101'").fetchall() == [("alice", 4, 1)]


def test_bluesky_jetstream_zst(prefect_harness, image_server, tmp_path, monkeypatch):
    did = "did:plc:abc123"
    monkeypatch.setenv("MMSA_BLUESKY_CDN", image_server.url("cdn"))
    urls = _pictures(image_server, f"cdn/{did}/bafy1@jpeg", f"cdn/{did}/bafy2@jpeg")
    gone = image_server.url(f"cdn/{did}/bafy3@jpeg")

    def post(rkey, record, time_us=1763632800000000):
        return {"did": did, "time_us": time_us, "kind": "commit",
                "commit": {"rev": "r", "operation": "create", "collection": "app.bsky.feed.post", "rkey": rkey,
                           "record": {"$type": "app.bsky.feed.post", **record}}}

    images = lambda *cids: [{"image": {"$type": "blob", "ref": {"$link": c}, "mimeType": "image/jpeg"}, "alt": ""} for c in cids]  # noqa: E731
    events = [
        post("3a", {"text": "new @acmecorp phone", "createdAt": "2026-11-20T10:00:00.000Z", "langs": ["en"],
                    "embed": {"$type": "app.bsky.embed.images", "images": images("bafy1", "bafy2")}}),
        {"did": did, "time_us": 1, "kind": "commit", "commit": {"operation": "create", "collection": "app.bsky.feed.like",
                                                               "rkey": "l", "record": {}}},
        {"did": did, "time_us": 2, "kind": "commit", "commit": {"operation": "delete", "collection": "app.bsky.feed.post", "rkey": "x"}},
        {"did": did, "time_us": 3, "kind": "identity", "identity": {"did": did}},
        post("3b", {"text": "globex pro review", "embed": {"$type": "app.bsky.embed.recordWithMedia", "record": {},
                                                            "media": {"$type": "app.bsky.embed.images", "images": images("bafy3")}}},
             time_us=1763632800123456),
        post("3c", {"text": "hello world", "createdAt": "2026-11-20T12:00:00+00:00"}),
    ]
    dump = _zst(tmp_path / "jetstream.jsonl.zst", events)
    at = f"at://{did}/app.bsky.feed.post/"
    with _score(dump, tmp_path) as con:  # detected from the records' shape
        _check(con, {
            at + "3a": (utc(2026, 11, 20, 10), "new @acmecorp phone", ["acme"],
                        [(urls[f"cdn/{did}/bafy1@jpeg"], "ok"), (urls[f"cdn/{did}/bafy2@jpeg"], "ok")]),
            at + "3b": (utc(2025, 11, 20, 10, 0, 0, 123456), "globex pro review", ["globex"], [(gone, "http_404")]),
            at + "3c": (utc(2026, 11, 20, 12), "hello world", [], []),
        }, [], {"bluesky: like": 1, "bluesky: post delete": 1, "bluesky: identity event": 1})


def test_mastodon_statuses_with_html_and_boosts(prefect_harness, image_server, tmp_path):
    urls = _pictures(image_server, "m/1.png", "m/2.png", "m/3.png")
    original = {"id": "7", "uri": "https://social.example/users/bob/statuses/7", "created_at": "2026-11-20T11:00:00.000Z",
                "content": "<p>Globex &amp; co, again</p>", "account": {"acct": "bob"},
                "media_attachments": [{"type": "image", "url": urls["m/3.png"]}]}
    first = {"id": "5", "uri": "https://social.example/users/al/statuses/5", "created_at": "2026-11-20T10:00:00.000Z",
             "content": '<p>Thanks <span class="h-card"><a href="https://social.example/@acmecorp" class="u-url mention">'
                        '@<span>acmecorp</span></a></span>!</p><p>Two pictures<br>below</p>',
             "account": {"acct": "al"}, "favourites_count": 2, "reblogs_count": 0, "replies_count": 1,
             "media_attachments": [{"type": "image", "url": urls["m/1.png"]},
                                   {"type": "gifv", "url": "https://social.example/x.mp4", "preview_url": urls["m/2.png"]}]}
    boost = {"id": "9", "created_at": "2026-11-21T00:00:00Z", "content": "", "account": {"acct": "carol"}, "reblog": original}
    plain = {"id": "11", "uri": "https://social.example/users/al/statuses/11", "created_at": "2026-11-20T12:00:00+0000",
             "content": "<p>quiet day</p>", "account": {"acct": "al"}, "media_attachments": []}
    dump = tmp_path / "statuses.jsonl.gz"
    dump.write_bytes(gzip.compress((json.dumps([first, boost]) + "\n" + json.dumps(plain) + "\n").encode()))
    with _score(dump, tmp_path, "--source-format", "mastodon") as con:
        _check(con, {
            first["uri"]: (utc(2026, 11, 20, 10), "Thanks @acmecorp!\nTwo pictures\nbelow", ["acme"],
                           [(urls["m/1.png"], "ok"), (urls["m/2.png"], "ok")]),
            original["uri"]: (utc(2026, 11, 20, 11), "Globex & co, again", ["globex"], [(urls["m/3.png"], "ok")]),
            plain["uri"]: (utc(2026, 11, 20, 12), "quiet day", [], []),
        }, [], {})


def test_any_export_through_a_field_mapping(prefect_harness, image_server, tmp_path):
    urls = _pictures(image_server, "f/1.jpg", "f/2.jpg")
    rows = [
        {"id": 1, "full_text": "acme and globex, both", "ts": 1763632800000, "user": {"screen_name": "al"},
         "media": [{"url": urls["f/1.jpg"]}, {"url": urls["f/2.jpg"]}], "brand": "initech"},
        {"id": 2, "full_text": "plain words", "ts": "1763636400", "media": []},
        {"id": 3, "full_text": "no time at all", "media": []},
    ]
    dump = _zst(tmp_path / "export.jsonl.zst", rows)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("post_id: id\ntext: full_text\n")
    with _score(dump, tmp_path, "--source-format", "flat", "--map-file", str(mapping), "--map", "image_urls=media[].url",
                "--map", "created_at=ts",
                "--map", "author=user.screen_name") as con:
        _check(con, {
            "1": (utc(2025, 11, 20, 10), "acme and globex, both", ["initech", "acme", "globex"],
                  [(urls["f/1.jpg"], "ok"), (urls["f/2.jpg"], "ok")]),
            "2": (utc(2025, 11, 20, 11), "plain words", [], []),
        }, ["missing created_at"], {})
        assert con.sql("SELECT author FROM scored_posts WHERE post_id = '1'").fetchall() == [("al",)]
