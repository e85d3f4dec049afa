"""fetch_images against a real misbehaving HTTP server on 127.0.0.1.

Each way a server, URL or image can go wrong must end in its documented status, the run must
complete, and every post must get exactly one result. Timeouts are shrunk so this runs fast.
"""

import os
import re
import socket
import ssl
import struct
import time
import zlib

from pathlib import Path

import numpy as np
import pytest

from imageserver import (
    Concurrency,
    ImageServer,
    drip,
    drip_headers,
    encode,
    endless,
    image_server,  # noqa: F401  (fixture)
    lying_length,
    redirect,
    send,
    stall,
    textured_image,
    tls_files,
)
from mmsa.images import decode
from mmsa.images.cache import ImageCache
from mmsa.images.config import FetchConfig
from mmsa.images.fetch import fetch_images
from mmsa.images.status import RETRYABLE, ImageStatus

DEADLINE = 1.5
JPEG = encode(textured_image(640, 480), "JPEG", quality=85)
PNG = encode(textured_image(300, 200, seed=1), "PNG")


def config(**overrides) -> FetchConfig:
    values = dict(
        allow_hosts=("127.0.0.1",),
        connect_timeout=0.5,
        read_timeout=0.5,
        deadline=DEADLINE,
        backoff=0.02,
        max_retry_after=1.0,
        max_bytes=2_000_000,
        workers=8,
    )
    values.update(overrides)
    return FetchConfig(**values)


@pytest.fixture
def cache(tmp_path):
    return ImageCache(tmp_path / "cache")


def fetch_one(url, cache, keep_images=False, **overrides):
    (result,) = fetch_images([("p1", url)], config(**overrides), cache, keep_images=keep_images)
    assert result.post_id == "p1"
    return result


def crafted_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height, with a tiny body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "AVIF"])
def test_images_of_each_format_are_fetched_and_preprocessed(image_server, cache, fmt):
    """A plain 200 with a real image gives ok, its bytes in the cache and a 224x224 RGB array."""
    image = textured_image(500, 300, seed=3)
    data = encode(image, fmt)
    (image_server.root / f"img.{fmt.lower()}").write_bytes(data)
    result = fetch_one(image_server.url(f"img.{fmt.lower()}"), cache, keep_images=True)
    assert (result.status, result.http_code, result.attempts, result.error) == ("ok", 200, 1, None)
    assert cache.load(result.image_key) == data
    array = result.image
    assert array.shape == (224, 224, 3) and array.dtype == np.uint8
    assert array.std() > 10  # the texture survived, not a flat colour


def test_an_avif_is_known_by_its_compatible_brands_too():
    """Some encoders write the major brand mif1 and list avif among the compatible ones; a HEIC lists none."""
    avif = encode(textured_image(64, 48, seed=1), "AVIF")
    assert avif[8:12] == b"avif" and b"mif1" in avif[16:32]
    mif1 = avif[:8] + b"mif1" + avif[12:]
    assert decode.sniff(mif1) == "AVIF" and decode.preprocess(mif1, 224, 10**7).shape == (224, 224, 3)
    heic = avif[:8] + b"heic" + avif[12:16] + b"mif1heicmiafMA1B" + avif[32:]
    assert decode.sniff(heic) is None


@pytest.mark.parametrize(
    "code, status", [(404, "http_404"), (410, "http_410"), (403, "http_error"), (401, "http_error"), (400, "http_error"),
                     (999, "http_error")]
)
def test_client_errors_are_not_retried(image_server, cache, code, status):
    """A 4xx (other than 408/429) is final: one request, no retry; so is a code past 599 (LinkedIn's 999)."""
    url = image_server.route("/gone", send(code, b"nope", "text/plain"))
    result = fetch_one(url, cache)
    assert (result.status, result.http_code, result.attempts) == (status, code, 1)
    assert image_server.hit_count("/gone") == 1


def test_server_error_then_ok_is_retried(image_server, cache):
    """A 500 is transient: the retry fetches the image."""
    url = image_server.route("/flaky", send(500), send(503), send(200, JPEG, "image/jpeg"))
    result = fetch_one(url, cache)
    assert (result.status, result.attempts) == ("ok", 3)
    assert image_server.hit_count("/flaky") == 3


def test_persistent_server_error_gives_up_after_the_retries(image_server, cache):
    """Retries are bounded: 1 + retries requests, then http_5xx."""
    url = image_server.route("/down", send(502))
    result = fetch_one(url, cache, retries=3)
    assert (result.status, result.http_code, result.attempts) == ("http_5xx", 502, 4)
    assert image_server.hit_count("/down") == 4


def test_429_retry_after_is_honoured_and_capped(image_server, cache):
    """Retry-After: 3600 is waited for, but only up to max_retry_after (1 s here)."""
    url = image_server.route("/busy", send(429, headers={"Retry-After": "3600"}), send(200, JPEG, "image/jpeg"))
    result = fetch_one(url, cache, max_retry_after=1.0, deadline=5)
    assert (result.status, result.attempts) == ("ok", 2)
    assert 0.9 <= result.elapsed_s < 2.5


def test_429_that_persists_ends_as_http_429(image_server, cache):
    """A server that keeps saying 429 gives http_429 within the deadline."""
    url = image_server.route("/busy", send(429, headers={"Retry-After": "0"}))
    result = fetch_one(url, cache)
    assert (result.status, result.http_code) == ("http_429", 429)
    assert result.attempts == 3


def test_a_header_of_digits_python_cannot_read_as_a_number_is_ignored(image_server, cache):
    """A Retry-After or Content-Length of "²" (a digit to str.isdigit, not to int()) is a server's bad header, not an
    invalid URL: the 503 is retried as one, the 200 read as a body of unknown length."""
    busy = image_server.route("/busy", send(503, headers={"Retry-After": "²"}), send(200, JPEG, "image/jpeg"))
    assert (fetch_one(busy, cache).status, image_server.hit_count("/busy")) == ("ok", 2)
    odd = image_server.route("/odd", lying_length(JPEG, "²", "image/jpeg"))
    assert fetch_one(odd, cache).status == "ok"


def test_408_counts_as_timeout_and_is_retried(image_server, cache):
    """408 Request Timeout is the server's timeout: retried like one."""
    url = image_server.route("/t", send(408), send(200, PNG, "image/png"))
    assert fetch_one(url, cache).status == "ok"
    assert image_server.hit_count("/t") == 2


def test_connection_refused(image_server, cache):
    """Nothing listening: connection_error after the retries."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetch_one(f"http://127.0.0.1:{port}/x.jpg", cache)
    assert (result.status, result.attempts) == ("connection_error", 3)


@pytest.mark.parametrize(
    "handler",
    [stall(10), drip_headers(0.2), drip(JPEG, interval=0.2)],
    ids=["slow-headers", "drip-fed-headers", "drip-fed-body"],
)
def test_slow_servers_are_cut_at_the_deadline(image_server, cache, handler):
    """However a server stalls or drips bytes, the worker is free shortly after the deadline."""
    url = image_server.route("/slow", handler)
    started = time.monotonic()
    result = fetch_one(url, cache)
    assert result.status == "timeout"
    assert time.monotonic() - started < DEADLINE + 0.5


def test_endless_body_is_cut_at_max_bytes(image_server, cache):
    """A body that never ends stops at the byte cap."""
    result = fetch_one(image_server.route("/big", endless()), cache, max_bytes=300_000)
    assert result.status == "too_large"
    assert 300_000 < result.bytes <= 300_000 + 64 * 1024


def test_content_length_over_the_cap_is_refused_before_reading(image_server, cache):
    """A declared size over max_bytes is refused without downloading the body."""
    url = image_server.route("/huge", lying_length(b"", claimed=10**10))
    result = fetch_one(url, cache)
    assert (result.status, result.bytes) == ("too_large", 0)


def test_content_length_longer_than_the_body(image_server, cache):
    """A body cut short of its Content-Length is a broken transfer, not a truncated image; its row says how much
    of it came."""
    url = image_server.route("/short", lying_length(PNG, claimed=len(PNG) + 5000))
    result = fetch_one(url, cache)
    assert (result.status, result.bytes) == ("connection_error", len(PNG))
    assert "IncompleteRead" in result.error or "ProtocolError" in result.error


def test_content_length_shorter_than_the_body(image_server, cache):
    """Only the declared bytes are read, so the image arrives truncated."""
    url = image_server.route("/cut", lying_length(JPEG, claimed=len(JPEG) // 2, content_type="image/jpeg"))
    assert fetch_one(url, cache).status == "decode_error"


def test_redirect_chain_is_followed(image_server, cache):
    """Relative and absolute redirects of 301/302/307/308 are followed to the image."""
    (image_server.root / "final.png").write_bytes(PNG)
    image_server.route("/a", redirect("/b", 301))
    image_server.route("/b", redirect(image_server.url("c"), 302))
    image_server.route("/c", redirect("d", 307))
    image_server.route("/d", redirect("/final.png", 308))
    result = fetch_one(image_server.url("a"), cache)
    assert (result.status, result.http_code) == ("ok", 200)
    assert image_server.hits == ["/a", "/b", "/c", "/d", "/final.png"]


def test_redirect_loop_ends(image_server, cache):
    """A loop stops at max_redirects and is not retried."""
    url = image_server.route("/loop", redirect("/loop"))
    result = fetch_one(url, cache, max_redirects=4)
    assert result.status == "too_many_redirects"
    assert image_server.hit_count("/loop") == 5


def test_blocked_address_directly_and_through_a_redirect(image_server, cache):
    """Allowing 127.0.0.1 does not allow 127.0.0.2, neither as the URL nor as a redirect target."""
    (image_server.root / "x.png").write_bytes(PNG)
    other = f"http://127.0.0.2:{image_server.port}/x.png"
    via = image_server.route("/hop", redirect(other))
    results = fetch_images([("direct", other), ("redirect", via)], config(), cache)
    assert [r.status for r in results] == ["blocked_address", "blocked_address"]
    assert "redirect" in results[1].error
    assert image_server.hits == ["/hop"]  # nothing reached the image


def test_loopback_is_blocked_without_the_allow_list(image_server, cache):
    """The default policy refuses the test server itself, by IP and by name."""
    (image_server.root / "x.png").write_bytes(PNG)
    items = [("ip", image_server.url("x.png")), ("name", f"http://localhost:{image_server.port}/x.png")]
    results = fetch_images(items, config(allow_hosts=()), cache)
    assert [r.status for r in results] == ["blocked_address", "blocked_address"]
    assert image_server.hits == []


@pytest.mark.parametrize("target", ["ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x/"])
def test_redirect_to_another_scheme_is_refused(image_server, cache, target):
    """A redirect may not leave http(s), even where local files are allowed."""
    url = image_server.route("/r", redirect(target))
    result = fetch_one(url, cache, allow_local_files=True)
    assert result.status == "unsupported_scheme"


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (PNG, "text/html", "ok"),  # wrong Content-Type, real image
        (b"<html><body>Not found</body></html>", "image/jpeg", "not_an_image"),
        (b"", "image/png", "not_an_image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml", "not_an_image"),
        (JPEG[: len(JPEG) // 2], "image/jpeg", "decode_error"),  # truncated JPEG
        (PNG[:200], "image/png", "decode_error"),
        (crafted_png(40_000, 40_000), "image/png", "too_large"),  # decompression bomb: Pillow refuses it
        (crafted_png(10_000, 10_000), "image/png", "too_large"),  # under Pillow's error limit: our pixel cap
    ],
    ids=["wrong-type", "html", "empty", "svg", "truncated-jpeg", "truncated-png", "bomb", "bomb-under-pillow-limit"],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns, we refuse
def test_content_is_judged_by_its_bytes(image_server, cache, body, content_type, status):
    """Magic bytes decide, not Content-Type; bad bytes end in a status, never a crash."""
    url = image_server.route("/img", send(200, body, content_type))
    result = fetch_one(url, cache)
    assert result.status == status
    assert result.attempts == 1  # content problems are not retried
    assert (result.image_key is not None) == (status == "ok")


def test_a_body_its_content_encoding_does_not_undo_is_a_decode_error_not_retried(image_server, cache):
    """A plain JPEG sent as gzip is the server's lasting mistake: not a connection error to retry every run."""
    url = image_server.route("/img", send(200, JPEG, "image/jpeg", {"Content-Encoding": "gzip"}))
    result = fetch_one(url, cache)
    assert (result.status, result.attempts) == ("decode_error", 1) and "DecodeError" in result.error


def test_pixel_cap(image_server, cache):
    """An image over max_pixels is refused before decoding."""
    url = image_server.route("/img", send(200, JPEG, "image/jpeg"))
    result = fetch_one(url, cache, max_pixels=640 * 480 - 1)
    assert result.status == "too_large" and "pixels" in result.error


@pytest.mark.parametrize(
    "url, status",
    [
        ("not a url", "invalid_url"),
        ("http://", "invalid_url"),
        ("http:///path.jpg", "invalid_url"),
        ("https://exa mple.com/a.jpg", "invalid_url"),
        ("http://[::1/a.jpg", "invalid_url"),
        ("http://example.com:99999/a.jpg", "invalid_url"),
        ("http://example.com:0/a.jpg", "invalid_url"),
        ("//cdn.example.com/a.jpg", "invalid_url"),
        ("images/cat.jpg", "invalid_url"),
        ("ftp://example.com/a.jpg", "unsupported_scheme"),
        ("data:image/png;base64,iVBORw0KGgo=", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("gopher://example.com/", "unsupported_scheme"),
        ("file:///etc/passwd", "local_file_refused"),
        ("/etc/passwd", "local_file_refused"),
        ("C:\\images\\a.jpg", "local_file_refused"),
    ],
)
def test_bad_url_strings_never_reach_the_network(cache, url, status):
    """Malformed URLs and foreign schemes are decided from the string alone."""
    result = fetch_one(url, cache)
    assert (result.status, result.attempts) == (status, 0)


def test_local_files_only_when_allowed(tmp_path, cache):
    """With allow_local_files, absolute paths and file: URLs are read; a missing one, a named pipe or a folder is
    file_error."""
    path = tmp_path / "local.png"
    path.write_bytes(PNG)
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)  # opening it would wait for a writer for ever
    items = [("path", str(path)), ("url", path.as_uri()), ("missing", str(tmp_path / "nope.png")), ("pipe", str(pipe)),
             ("folder", str(tmp_path))]
    results = fetch_images(items, config(allow_local_files=True), cache)
    assert [r.status for r in results] == ["ok", "ok", "file_error", "file_error", "file_error"]
    assert results[0].image_key == results[1].image_key


def test_every_post_gets_one_row_in_order(image_server, cache):
    """Duplicates, blanks and failures mixed: one result per post, in input order; one request per URL."""
    (image_server.root / "a.jpg").write_bytes(JPEG)
    items = [
        ("1", image_server.url("a.jpg")),
        ("2", None),
        ("3", "   "),
        ("4", image_server.url("missing.jpg")),
        ("5", image_server.url("a.jpg")),
        ("6", "ftp://x/y"),
        ("7", image_server.url("a.jpg") + "  "),
    ]
    results = fetch_images(items, config(), cache)
    assert [r.post_id for r in results] == ["1", "2", "3", "4", "5", "6", "7"]
    assert [r.status for r in results] == ["ok", "no_image", "no_image", "http_404", "ok", "unsupported_scheme", "ok"]
    assert results[0].image_key == results[4].image_key == results[6].image_key
    assert image_server.hit_count("/a.jpg") == 1


def test_per_host_cap_limits_concurrent_requests(image_server, cache):
    """No more than per_host requests run at once against one host, however many workers."""
    probe = Concurrency(send(200, PNG, "image/png"), hold=0.15)
    urls = [image_server.route(f"/p{n}", probe) for n in range(8)]
    results = fetch_images([(str(n), url) for n, url in enumerate(urls)], config(workers=8, per_host=2), cache)
    assert all(r.status == "ok" for r in results)
    assert probe.peak == 2


def test_kept_alive_connections_are_reused_unless_a_download_was_cut_short(image_server, cache):
    """A download read to its end hands its connection back for the next one (no TCP, and on https no TLS,
    handshake per image); one cut short, its body unread, is closed rather than reused."""
    too_large = image_server.route("/big", send(200, bytes(3_000_000), "image/png"))
    urls = [too_large] + [image_server.route(f"/k{n}", send(200, PNG, "image/png")) for n in range(6)]
    results = fetch_images([(str(n), url) for n, url in enumerate(urls)], config(workers=1, per_host=1), cache)
    assert [r.status for r in results] == ["too_large"] + ["ok"] * 6
    assert image_server.connections == 2


def test_same_bytes_share_one_cache_entry(image_server, cache):
    """The cache is content-addressed: two URLs with the same bytes give one key and one file."""
    (image_server.root / "a.png").write_bytes(PNG)
    (image_server.root / "b.png").write_bytes(PNG)
    results = fetch_images([("1", image_server.url("a.png")), ("2", image_server.url("b.png"))], config(), cache)
    assert results[0].image_key == results[1].image_key
    assert len(list(cache.root.glob("img/*/*"))) == 1


def test_kept_images_come_from_the_cached_bytes_at_any_size(image_server, cache):
    """Images are kept only when asked for. A URL in the cache is not requested again, whatever the image
    size: its bytes are preprocessed afresh, the same array as a download gives, or too_large under a
    lower pixel cap than they were fetched with."""
    (image_server.root / "a.png").write_bytes(PNG)
    url = image_server.url("a.png")
    assert fetch_one(url, cache).image is None
    for size in (224, 96):
        fresh = fetch_one(url, ImageCache(cache.root.parent / f"fresh-{size}"), keep_images=True, image_size=size)
        cached = fetch_one(url, cache, keep_images=True, image_size=size)
        assert cached.status == "ok" and cached.image.shape == (size, size, 3)
        assert np.array_equal(cached.image, fresh.image)
        assert np.array_equal(cached.image, decode.preprocess(PNG, size, 50_000_000))
    assert image_server.hits == ["/a.png"] * 3  # the first fetch and the two fresh caches
    capped = fetch_one(url, cache, keep_images=True, max_pixels=300 * 200 - 1)
    assert (capped.status, capped.image) == ("too_large", None)


def test_second_run_reuses_the_url_index(image_server, cache):
    """A URL fetched before, ok or failed, is not requested again."""
    (image_server.root / "a.png").write_bytes(PNG)
    items = [("1", image_server.url("a.png")), ("2", image_server.url("missing.png"))]
    first = fetch_images(items, config(), cache)
    second = fetch_images(items, config(), cache)
    assert [r.status for r in second] == ["ok", "http_404"]
    assert second == first
    assert sorted(image_server.hits) == ["/a.png", "/missing.png"]


def test_retry_failed_refetches_only_retryable_failures(image_server, cache):
    """retry_failed requests again exactly the URLs whose status was retryable, and updates them."""
    (image_server.root / "a.png").write_bytes(PNG)
    image_server.route("/flaky", send(500), send(500), send(500), send(200, PNG, "image/png"))
    image_server.route("/busy", send(429), send(429), send(429), send(200, JPEG, "image/jpeg"))
    items = [
        ("ok", image_server.url("a.png")),
        ("404", image_server.url("missing.png")),
        ("html", image_server.route("/html", send(200, b"<html>", "image/png"))),
        ("flaky", image_server.url("flaky")),
        ("busy", image_server.url("busy")),
    ]
    first = fetch_images(items, config(), cache)
    assert [r.status for r in first] == ["ok", "http_404", "not_an_image", "http_5xx", "http_429"]
    assert {r.status for r in first} & RETRYABLE == {"http_5xx", "http_429"}
    hits_before = list(image_server.hits)

    again = fetch_images(items, config(), cache, retry_failed=True)
    assert [r.status for r in again] == ["ok", "http_404", "not_an_image", "ok", "ok"]
    assert sorted(image_server.hits[len(hits_before) :]) == ["/busy", "/flaky"]
    assert again[:3] == first[:3]  # the other rows are reused unchanged


def test_the_status_table_in_the_docs_matches_the_code():
    """docs/image_status.md lists exactly the statuses of ImageStatus, and marks exactly RETRYABLE as retryable."""
    doc = (Path(__file__).parents[1] / "docs" / "image_status.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_]+)` \|.*\| *(yes)? *\|$", doc, flags=re.MULTILINE)
    assert {status for status, _ in rows} == {s.value for s in ImageStatus}
    assert {status for status, retryable in rows if retryable} == RETRYABLE


def test_https_pins_the_address_and_still_verifies_the_name(tmp_path, cache):
    """Connecting to the checked IP must keep TLS checking the host name: right name ok, wrong name refused."""
    ca, cert, key = tls_files(tmp_path, "localhost")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    (tmp_path / "a.png").write_bytes(PNG)
    with ImageServer(tmp_path, tls=tls) as server:
        items = [("name", server.url("a.png", host="localhost")), ("ip", server.url("a.png"))]
        results = fetch_images(items, config(allow_hosts=("127.0.0.1",), ca_bundle=str(ca)), cache)
        fresh = ImageCache(tmp_path / "fresh")
        untrusted = fetch_images([("other-ca", items[0][1])], config(allow_hosts=("127.0.0.1",)), fresh)
    assert [r.status for r in results] == ["ok", "connection_error"]
    assert "localhost" in results[1].error or "match" in results[1].error  # the certificate is not for 127.0.0.1
    assert untrusted[0].status == "connection_error" and "certificate" in untrusted[0].error.lower()


def test_waiting_for_a_busy_host_does_not_use_up_the_deadline(image_server, cache):
    """With per_host=1, later URLs queue for longer than the deadline and must still succeed."""

    def slow_ok(request):
        time.sleep(0.4)
        send(200, PNG, "image/png")(request)

    urls = [image_server.route(f"/q{n}", slow_ok) for n in range(5)]  # 5 x 0.4 s = 2 s > deadline 1.5 s
    results = fetch_images([(str(n), url) for n, url in enumerate(urls)], config(workers=5, per_host=1), cache)
    assert [r.status for r in results] == ["ok"] * 5


def test_one_run_survives_every_misbehaviour_at_once(image_server, cache):
    """All the bad servers together, concurrently: the run completes with one documented row per post."""
    (image_server.root / "ok.jpg").write_bytes(JPEG)
    routes = {
        "ok": (image_server.url("ok.jpg"), "ok"),
        "404": (image_server.url("nope.jpg"), "http_404"),
        "500": (image_server.route("/e500", send(500)), "http_5xx"),
        "stall": (image_server.route("/stall", stall(10)), "timeout"),
        "drip": (image_server.route("/drip", drip(JPEG, 0.2)), "timeout"),
        "endless": (image_server.route("/endless", endless()), "too_large"),
        "loop": (image_server.route("/loop", redirect("/loop")), "too_many_redirects"),
        "html": (image_server.route("/html", send(200, b"<html>", "image/jpeg")), "not_an_image"),
        "bomb": (image_server.route("/bomb", send(200, crafted_png(40_000, 40_000), "image/png")), "too_large"),
        "blocked": (f"http://127.0.0.2:{image_server.port}/ok.jpg", "blocked_address"),
        "scheme": ("ftp://example.com/a.jpg", "unsupported_scheme"),
        "none": (None, "no_image"),
    }
    items = [(post_id, url) for post_id, (url, _) in routes.items()]
    started = time.monotonic()
    results = fetch_images(items, config(workers=16), cache)
    assert time.monotonic() - started < DEADLINE + 1.0
    assert {r.post_id: r.status for r in results} == {post_id: status for post_id, (_, status) in routes.items()}
    assert [r.post_id for r in results] == list(routes)


def test_a_server_s_malformed_headers_are_its_image_s_row_not_a_traceback_on_the_console(image_server, cache, caplog):
    """urllib3 logged a header line it could not parse as a warning with its traceback, in the middle of a run."""

    def malformed(request):
        request.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nno colon in this line\r\n"
                           b"Content-Length: " + str(len(JPEG)).encode() + b"\r\n\r\n" + JPEG)

    with caplog.at_level("WARNING"):
        result = fetch_one(image_server.route("malformed.jpg", malformed), cache)
    assert result.status == ImageStatus.TIMEOUT  # its length unread, the body waited for: told in its row
    assert not [r for r in caplog.records if r.name.startswith("urllib3")]
