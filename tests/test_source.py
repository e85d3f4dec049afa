"""Reading and validating dumps: every input row is accounted for exactly once."""

import codecs
import gzip
import json
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from imageserver import image_server, send  # noqa: F401  (fixture)
from mmsa import source
from mmsa.demo import serve_folder

GOOD = [
    {"post_id": "a1", "created_at": "2026-11-20T10:00:00Z", "text": "love it", "brand": "acme", "likes": 3},
    {"post_id": 42, "created_at": "2026-11-20 11:30:00", "image_url": "http://x/y.jpg", "shares": "7"},
    {"post_id": "a3", "created_at": "2026-11-21T01:00:00+02:00", "text": "meh", "campaign": "black-friday"},
]
BAD = [
    ({"created_at": "2026-11-20T10:00:00Z", "text": "no id"}, "missing post_id"),
    ({"post_id": "b2", "text": "no date"}, "missing created_at"),
    ({"post_id": "b3", "created_at": "yesterday", "text": "x"}, "created_at is not ISO-8601"),
    ({"post_id": "b4", "created_at": "2026-11-20", "text": "x", "likes": -1}, "likes is not a count"),
    ({"post_id": "b5", "created_at": "2026-11-20"}, "nothing to score"),
    ({"post_id": ["b6"], "created_at": "2026-11-20", "text": "x"}, "post_id is not a string or an integer"),
    ({"post_id": "b7", "created_at": "2026-11-20", "text": ["a", "b"]}, "text is not a string"),
    ({"post_id": "a1", "created_at": "2026-11-20", "text": "again"}, "duplicate post_id"),
]


def _write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return path


def _all(path, shard_size=2, name=None):
    shards = list(source.iter_shards(path, shard_size, dump_name=name))
    posts = [p for s in shards for p in s.posts.to_pylist()]
    rejected = [r for s in shards for r in s.rejected]
    return shards, posts, rejected


def test_jsonl_rows_are_validated_and_each_accounted_once(tmp_path):
    dump = _write_jsonl(tmp_path / "d.jsonl", GOOD + [b for b, _ in BAD], extra_lines=["{not json\n", "[1,2]\n"])
    shards, posts, rejected = _all(dump)
    assert [p["post_id"] for p in posts] == ["a1", "42", "a3"]
    assert len(posts) + len(rejected) == len(GOOD) + len(BAD) + 2
    reasons = [r["reason"] for r in rejected]
    for (_, expected), got in zip(BAD, reasons):
        assert got.startswith(expected), (expected, got)
    assert reasons[-2].startswith("invalid JSON") and reasons[-1] == "invalid JSON: not an object"
    assert [r["raw"] for r in rejected[-2:]] == ["{not json", "[1,2]"]  # the line itself, for whoever mends it
    assert [s.posts.num_rows for s in shards] == [2, 1]


def test_a_record_no_column_can_hold_is_rejected_and_the_rest_goes_on(tmp_path):
    """Values that passed as valid JSON but fit no column (a count past 10^15, so that a report's sum of three stays
    in BIGINT; a date outside 1970-2100, half an emoji's UTF-16 pair, arrays nested past the parser's depth)
    reject their record or are mended in it; none ends the run."""
    ok = {"created_at": "2026-11-20T10:00:00Z", "text": "fine"}
    lines = [json.dumps({"post_id": "big", **ok, "likes": 1e30}), json.dumps({"post_id": "huge", **ok, "likes": 2**63 - 1}),
             json.dumps({"post_id": "future", **ok, "created_at": "9999-12-31T23:59:59Z"}),
             json.dumps({"post_id": "year1", **ok, "created_at": "0001-01-01T00:00:00Z"}),
             "[" * 100_000 + "]" * 100_000,
             '{"post_id": "half\\ud83d", "created_at": "2026-11-20T10:00:00Z", "text": "cut \\ud83d emoji", "x": "\\udc00"}',
             json.dumps({"post_id": "fine", **ok})]
    dump = tmp_path / "d.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    _, posts, rejected = _all(dump)
    assert [(r["post_id"], r["reason"].split(":")[0]) for r in rejected] == [
        ("big", "likes is not a count (a whole number from 0 to 10^15)"),
        ("huge", "likes is not a count (a whole number from 0 to 10^15)"),
        ("future", "created_at is not between 1970 and 2100"), ("year1", "created_at is not between 1970 and 2100"),
        (None, "invalid JSON")]
    assert [(p["post_id"], p["text"]) for p in posts] == [("half\ufffd", "cut \ufffd emoji"), ("fine", "fine")]
    assert json.loads(posts[0]["extra"]) == {"x": "\ufffd"}


def test_a_byte_order_mark_and_an_indented_json_array_are_read_as_records(tmp_path):
    """What editors and Excel write: a BOM before the first record (JSONL and CSV), and a .json file that is one
    indented array (or one API page) rather than a record per line."""
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in GOOD), encoding="utf-8")
    csv = tmp_path / "bom.csv"
    csv.write_text("post_id,created_at,text\nc1,2026-11-20T10:00:00Z,hello\n", encoding="utf-8-sig")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(GOOD + ["not an object"], indent=2))
    assert [[p["post_id"] for p in _all(f)[1]] for f in (jsonl, csv)] == [["a1", "42", "a3"], ["c1"]]
    _, posts, rejected = _all(pretty)
    assert [p["post_id"] for p in posts] == ["a1", "42", "a3"]
    line = pretty.read_text().splitlines().index('  "not an object"') + 1  # the line a record starts on
    assert [(r["line"], r["reason"]) for r in rejected] == [(line, "invalid JSON: not an object")]
    # cut off (a download that broke): the records before the break, then one row; objects one after another
    # (jq's output): each a record. Each line of them was a rejection
    cut, jq = tmp_path / "cut.json", tmp_path / "jq.json"
    cut.write_text(json.dumps(GOOD, indent=2)[:-30])
    jq.write_text("\n".join(json.dumps(r, indent=2) for r in GOOD))
    _, posts, rejected = _all(cut, 10)
    assert [p["post_id"] for p in posts] == ["a1", "42"] and len(rejected) == 1
    assert rejected[0]["reason"].startswith("unreadable file from here")
    assert [p["post_id"] for p in _all(jq, 10)[1]] == ["a1", "42", "a3"]
    jq.write_text(jq.read_text()[:-30])  # cut too: the records before the break, then one row
    _, posts, rejected = _all(jq, 10)
    assert [p["post_id"] for p in posts] == ["a1", "42"] and [r["reason"][:25] for r in rejected] == ["unreadable file from here"]


def test_values_are_normalised(tmp_path):
    _, posts, _ = _all(_write_jsonl(tmp_path / "d.jsonl", GOOD))
    a1, p42, a3 = posts
    assert a1["created_at"].isoformat() == "2026-11-20T10:00:00+00:00"
    assert p42["created_at"].isoformat() == "2026-11-20T11:30:00+00:00"  # naive = UTC
    assert a3["created_at"].isoformat() == "2026-11-20T23:00:00+00:00"  # converted to UTC
    assert (a1["likes"], p42["shares"], p42["text"]) == (3, 7, None)
    assert json.loads(a3["extra"]) == {"campaign": "black-friday"} and a1["extra"] is None


def test_csv_and_parquet_give_the_same_posts(tmp_path):
    _, expected, _ = _all(_write_jsonl(tmp_path / "d.jsonl", GOOD))
    frame = pa.Table.from_pylist([{k: (None if r.get(k) is None else str(r.get(k))) for k in
                                   ("post_id", "created_at", "text", "image_url", "brand", "likes", "shares")} for r in GOOD])
    pacsv.write_csv(frame, tmp_path / "d.csv")
    pq.write_table(frame, tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        _, posts, rejected = _all(tmp_path / name)
        assert rejected == []
        strip = lambda p: {k: v for k, v in p.items() if k != "extra"}  # noqa: E731
        assert [strip(p) for p in posts] == [strip(p) for p in expected]


def test_a_value_python_cannot_hold_rejects_its_row_alone(tmp_path):
    """A JSONL integer of 5,000 digits, a Parquet time past the year 9999: that row is rejected with the reason,
    the file's other rows are read (not the rest of the file taken for unreadable, nor the run stopped); nanosecond
    times, which pyarrow will not turn into Python datetimes, are read to the microsecond."""
    dump = tmp_path / "d.jsonl"
    dump.write_text(json.dumps(GOOD[0]) + "\n" + '{"post_id": "big", "likes": ' + "9" * 5000 + "}\n"
                    + json.dumps(GOOD[2]) + "\n")
    _, posts, rejected = _all(dump)
    assert [p["post_id"] for p in posts] == ["a1", "a3"]
    assert [(r["line"], r["reason"][:40]) for r in rejected] == [(2, "invalid JSON: Exceeds the limit (4300 di")]
    times = pa.array([1_700_000_000_123_456_789, 1_700_000_001_000_000_000], pa.timestamp("ns", "UTC"))
    pq.write_table(pa.table({"post_id": ["n1", "n2"], "created_at": times, "text": ["a", "b"]}), tmp_path / "ns.parquet")
    _, posts, rejected = _all(tmp_path / "ns.parquet")
    assert rejected == [] and [p["created_at"].microsecond for p in posts] == [123456, 0]
    far = pa.array([1_700_000_000, 10**15, 1_700_000_100], pa.timestamp("s"))
    pq.write_table(pa.table({"post_id": ["s1", "s2", "s3"], "created_at": far, "text": ["a", "b", "c"]}),
                   tmp_path / "far.parquet")
    _, posts, rejected = _all(tmp_path / "far.parquet")
    assert [p["post_id"] for p in posts] == ["s1", "s3"]
    assert [r["line"] for r in rejected] == [2] and rejected[0]["reason"].startswith("unreadable value: OverflowError")


def test_dump_over_http_is_downloaded(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _write_jsonl(site / "posts.jsonl", GOOD)
    with serve_folder(site) as base:
        local = source.localise(f"{base}/posts.jsonl", tmp_path / "dl")
    assert local.read_text() == (site / "posts.jsonl").read_text()
    assert source.files_key(local) == source.files_key(site / "posts.jsonl")


def test_a_dump_served_gzipped_on_the_fly_is_stored_as_the_dump(image_server, tmp_path):
    """A server that gzips JSON as it sends it (Content-Encoding), as nginx or a CDN does, sent the dump itself; a
    `.gz` file labelled gzip too (a common misconfiguration) is that file."""
    plain = _write_jsonl(tmp_path / "posts.jsonl", GOOD)
    packed = gzip.compress(plain.read_bytes())
    on_the_fly = image_server.route("/posts.jsonl", send(200, packed, "application/x-ndjson", {"Content-Encoding": "gzip"}))
    gz_file = image_server.route("/posts.jsonl.gz", send(200, packed, "application/gzip", {"Content-Encoding": "gzip"}))
    assert source.localise(on_the_fly, tmp_path / "a").read_bytes() == plain.read_bytes()
    gz = source.localise(gz_file, tmp_path / "b")
    assert gz.read_bytes() == packed and _all(gz)[1] == _all(plain)[1]


def test_a_dump_file_whose_name_is_not_utf8_is_refused_with_its_name(tmp_path):
    """The name goes with every rejected row into DuckDB, which stores UTF-8 only."""
    folder = tmp_path / "dump"
    folder.mkdir()
    _write_jsonl(folder / "b.jsonl", GOOD)
    _write_jsonl(folder / os.fsdecode(b"caf\xe9.jsonl"), GOOD)
    with pytest.raises(ValueError, match=r"dump file name is not UTF-8: b'.*caf\\xe9.jsonl'; rename the file"):
        source.resolve(folder, tmp_path)


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the format"):
        list(source.iter_shards(_write_jsonl(tmp_path / "d.txt", GOOD), 10))
    with pytest.raises(FileNotFoundError, match="dump not found"):
        source.localise(tmp_path / "nope.jsonl", tmp_path)


def test_a_file_in_windows_1252_keeps_its_letters(tmp_path):
    """Excel's CSV on Windows is Windows-1252: its accents and euro sign became U+FFFD (then a post read as Dutch
    and stored unscored). Bytes that are not UTF-8 are read in that code page; UTF-8 in the same file stays UTF-8."""
    texts = ["José loves the café in Zürich: 5 €", "Señora Muñoz: très bien; naïve"]
    body = "post_id,created_at,text\n" + "".join(f"p{i},2026-11-20T10:00:00Z,{t}\n" for i, t in enumerate(texts))
    plain, packed = tmp_path / "excel.csv", tmp_path / "excel.csv.gz"
    plain.write_bytes(body.encode("cp1252") + "p9,2026-11-20T10:00:00Z,déjà vu ✓\n".encode("utf-8"))
    packed.write_bytes(gzip.compress(body.encode("cp1252")))
    assert [p["text"] for p in _all(plain, 10)[1]] == [*texts, "déjà vu ✓"]
    assert [p["text"] for p in _all(packed, 10)[1]] == texts


def test_excels_unicode_text_save_is_read(tmp_path):
    """Excel's "Unicode text" is UTF-16 with a byte-order mark, tab-separated: every row was rejected, the first
    for a header "with no post_id column"."""
    texts = ["José loves the café 😀", "日本語のポスト"]
    body = "post_id\tcreated_at\ttext\r\n" + "".join(f"p{i}\t2026-11-20T10:00:00Z\t{t}\r\n" for i, t in enumerate(texts))
    for name, encoding in (("le.txt.csv", "utf-16"), ("be.csv", "utf-16-be")):
        data = body.encode(encoding)
        (tmp_path / name).write_bytes(data if encoding == "utf-16" else codecs.BOM_UTF16_BE + data)
        _, posts, rejected = _all(tmp_path / name, 10)
        assert ([p["text"] for p in posts], rejected) == (texts, []), name
    (tmp_path / "le.csv.gz").write_bytes(gzip.compress(body.encode("utf-16")))
    assert [p["text"] for p in _all(tmp_path / "le.csv.gz", 10)[1]] == texts


def test_a_csv_quote_never_closed_does_not_swallow_the_rows_after_it(tmp_path):
    """Read leniently, a field opening a quote it never closes took every later line as its text: posts lost
    without a trace. A quote never closed ends the file as one rejection at its row's line; a row strict reading
    refuses is read with MySQL's backslash escapes (over the lines its field holds, which are not rows), else as
    before (a space after a closing quote), and so is the rest."""
    head = "post_id,created_at,text\n"
    unclosed, loose = tmp_path / "unclosed.csv", tmp_path / "loose.csv"
    unclosed.write_text(head + 'p1,2026-11-20,ok\n\np2,2026-11-20,"oops\np3,2026-11-20,three\np4,2026-11-20,four\n')
    loose.write_text(head + 'p1,2026-11-20,my 5" screen\np2,2026-11-20,"He said \\"great\\" today"\np3,2026-11-20,"hi" \n'
                     'p4,2026-11-20,"two\nlines"\np5,2026-11-20,"oops\np6,2026-11-20,six\np7,2026-11-20,"seven"\n'
                     'p8,2026-11-20,"she wrote \\"meh\\" and\np9 liked it"\np10,2026-11-20,ten\n'
                     # a path's backslash is no MySQL escape: read leniently, not as a field running on to p12's quote
                     'p11,2026-11-20,"C:\\dir\\" x\np12,2026-11-20,said hi"\n')
    _, posts, rejected = _all(unclosed, 10)
    assert [p["text"] for p in posts] == ["ok"]
    assert [(r["line"], r["reason"]) for r in rejected] == [(4, "unreadable file from here: a quoted field never closes")]
    _, posts, rejected = _all(loose, 10)
    # and a quote never closed before a later quote costs its own row's text only, not the rows between
    assert [p["text"] for p in posts] == ['my 5" screen', 'He said "great" today', "hi ", "two\nlines", "oops", "six",
                                          "seven", 'she wrote "meh" and\np9 liked it', "ten", "C:\\dir\\ x", 'said hi"']
    assert rejected == []
    mysql = tmp_path / "mysql.csv"  # MySQL writes NULL as \N: a row holding one is MySQL's all the same
    mysql.write_text('post_id,created_at,text,author\np1,2026-11-20,"he said \\"hi\\"\nsecond line",\\N\n')
    _, posts, rejected = _all(mysql, 10)
    assert ([p["text"] for p in posts], rejected) == (['he said "hi"\nsecond line'], [])


def test_a_csv_separated_by_semicolons_or_tabs_is_read_by_its_header(tmp_path):
    """Excel where the comma is the decimal mark writes semicolons (and leaves a comma in a column's name
    unquoted); every row was rejected, the header as "no post_id column". The header row, outside quoted names,
    tells the separator: the most frequent of comma, semicolon, tab and bar."""
    files = {"semi.csv": 'post_id;created_at;text\np1;2026-11-20;"fine; thanks"\np2;2026-11-20;1,5 stars\n',
             "named.csv": 'post_id;created_at;"likes, total";text\np1;2026-11-20;3;"fine; thanks"\np2;2026-11-20;4;1,5 stars\n',
             "german.csv": 'post_id;created_at;likes, total;text\np1;2026-11-20;3;"fine; thanks"\np2;2026-11-20;4;1,5 stars\n',
             "tabs.csv": "post_id\tcreated_at\ttext\np1\t2026-11-20\tfine; thanks\np2\t2026-11-20\t1,5 stars\n"}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
        _, posts, rejected = _all(tmp_path / name, 10)
        assert [p["text"] for p in posts] == ["fine; thanks", "1,5 stars"] and rejected == [], name


def test_parquet_strings_written_as_plain_binary_are_read_as_text(tmp_path):
    """Hive, Impala and older Spark write strings as BINARY without the UTF-8 annotation: the post's text was
    read as "b'...'" (and scored so), a binary post_id rejected. A column of UTF-8 but for one value in ten is
    text (that value read as Windows-1252); one mostly not (a picture, blank in most rows) stays bytes."""
    path = tmp_path / "hive.parquet"
    texts = ["café au lait".encode(), *(f"post {i}".encode() for i in range(8)), "Jos\xe9".encode("latin-1")]
    pq.write_table(pa.table({"post_id": pa.array([f"b{i}".encode() for i in range(10)], pa.binary()),
                             "created_at": ["2026-11-20T10:00:00Z"] * 10, "text": pa.array(texts, pa.binary()),
                             "blob": pa.array([b"\x89PNG\xff"] + [b""] * 9, pa.binary())}), path)
    posts = _all(path, 10)[1]
    assert [(p["post_id"], p["text"]) for p in posts[::9]] == [("b0", "café au lait"), ("b9", "José")]
    assert "\\xff" in posts[0]["extra"]  # the picture, as bytes


def test_a_csv_rows_line_is_the_one_it_starts_on_past_blank_lines(tmp_path):
    """A rejection names the row's line: blank lines before a row moved it onto the first of them."""
    path = tmp_path / "blank.csv"
    path.write_text('post_id,created_at,text\np1,2026-11-20,ok\n\n\np2,2026-11-20,"two\nlines"\n\np3,2026-11-20,a,b\n')
    _, posts, rejected = _all(path, 10)
    assert [p["text"] for p in posts] == ["ok", "two\nlines"] and [r["line"] for r in rejected] == [8]


def test_a_csv_without_a_header_row_loses_no_post(tmp_path):
    """A CSV written without its header row: its first line, taken for the header, is accounted for as a rejection
    that says why (with the line as read), beside the other rows' own; a header that names post_id through --map
    is no rejection."""
    lines = ["c1,2026-11-20T10:00:00Z,first post", "c2,2026-11-20T11:00:00Z,second post"]
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join(lines) + "\n")
    _, posts, rejected = _all(bare)
    assert posts == [] and len(rejected) == 2
    assert rejected[0]["reason"].startswith("CSV header has no post_id column")
    assert (rejected[0]["raw"], rejected[0]["line"]) == (lines[0], 1)
    assert (rejected[1]["reason"], rejected[1]["line"]) == ("missing post_id", 2)
    reddit = tmp_path / "reddit.csv"  # a platform's columns: its reader makes the post_id (Reddit: t3_ + id)
    reddit.write_text("id,title,selftext,created_utc,preview\nabc,acme rocks,,1763632800,\n")
    (shard,) = source.iter_shards(reddit, 10)
    assert shard.posts["post_id"].to_pylist() == ["t3_abc"] and shard.rejected == []
    mapped = tmp_path / "mapped.csv"
    mapped.write_text("id,created_at,text\n" + "\n".join(lines) + "\n")
    (shard,) = source.iter_shards(mapped, 10, options=source.ReadOptions(mapping={"post_id": "id"}))
    assert shard.posts["post_id"].to_pylist() == ["c1", "c2"] and shard.rejected == []


def test_an_empty_json_array_line_is_a_page_of_no_posts_skipped_and_counted(tmp_path):
    """`[]` (an API page of no statuses, saved as a line) is valid JSON holding no record: no rejection."""
    dump = _write_jsonl(tmp_path / "d.jsonl", GOOD[:1], extra_lines=["[]\n"])
    shards, posts, rejected = _all(dump)
    assert [p["post_id"] for p in posts] == ["a1"] and rejected == []
    assert sum((s.skipped for s in shards), start=__import__("collections").Counter()) == {"empty JSON array": 1}
