"""The embedded default run behind `make run`: a small generated dump, scored end to end.

Posts and their images are generated here (no research data ships with the project). The
images are served the way real dumps arrive: over HTTP, from a server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import random
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BRANDS = ("acme", "globex", "initech")
SOURCES = ("twitter", "instagram", "reddit")
PHRASES = {
    "positive": [
        "Absolutely love my new {b} headphones, best purchase this year!",
        "Great service from {b} today, the staff were so friendly :)",
        "{b} just made my morning, amazing coffee and a beautiful view",
        "So happy with the {b} update, everything feels faster. Thank you!",
    ],
    "neutral": [
        "{b} store opens at 9am on weekdays.",
        "Picked up a parcel from {b} this afternoon.",
        "{b} announced its quarterly results today.",
    ],
    "negative": [
        "Worst experience ever with {b}, my order arrived broken. Never again.",
        "{b} support kept me on hold for two hours, terrible and rude.",
        "Really disappointed, the {b} app crashed again and I lost everything",
    ],
}


def _image(label: str, rng: random.Random) -> Image.Image:
    """A textured picture whose palette leans with the label: warm and bright, flat, or dark."""
    base = {"positive": (250, 190, 60), "neutral": (150, 150, 150), "negative": (40, 45, 70)}[label]
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(-40, 40, size=(360, 480, 3))
    grad = np.linspace(0.7, 1.2, 480)[None, :, None]
    pixels = np.clip(np.array(base)[None, None, :] * grad + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, r = rng.randrange(480), rng.randrange(360), rng.randrange(15, 60)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(min(255, c + 60) for c in base))
    return img


def make_dump(folder: Path, base_url: str, n_posts: int, seed: int = 7) -> Path:
    """Write images/ and posts.jsonl; a few posts are deliberately broken to show the statuses."""
    if n_posts < 6:
        raise ValueError(f"--posts must be at least 6 (posts 4 and 6 show a missing and an absent image), got {n_posts}")
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 11, 16, tzinfo=timezone.utc)
    rows = []
    for i in range(n_posts):
        label = rng.choices(list(PHRASES), weights=(5, 2, 3))[0]
        brand = BRANDS[i % len(BRANDS)]
        name = f"img{i:03d}.jpg"
        _image(label, rng).save(folder / "images" / name, quality=88)
        rows.append(
            {
                "post_id": f"demo-{i:03d}",
                "created_at": (start + timedelta(minutes=(96 * 60 // n_posts) * i)).isoformat(),
                "brand": brand,
                "source": SOURCES[i % len(SOURCES)],
                "lang": "en",
                "author": f"user{rng.randrange(1000)}",
                "text": rng.choice(PHRASES[label]).format(b=brand.capitalize()),
                "image_url": f"{base_url}/images/{name}",
                "likes": rng.randrange(500),
                "shares": rng.randrange(50),
                "replies": rng.randrange(30),
            }
        )
    rows[3]["image_url"] = f"{base_url}/images/missing.jpg"  # -> http_404, still scored on text
    rows[5]["image_url"] = None  # -> no_image
    rows.append({"post_id": "demo-bad", "created_at": "last tuesday", "text": "unparseable date"})  # -> rejected
    dump = folder / "posts.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dump


@contextmanager
def serve_folder(folder: Path):
    """Serve a folder over HTTP on 127.0.0.1 (ephemeral port) for the life of the block."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    # Keep-alive, as image hosts and CDNs serve: the HTTP/1.0 default opened a connection (and a server
    # thread) per image, which cost this server twice the CPU per image in benchmark runs.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:
        pass


def run(workdir: str | Path = "demo_output", n_posts: int = 48) -> None:
    """Generate, serve, score, and print the daily brand sentiment report."""
    from mmsa import report
    from mmsa.flows.score import score_flow
    from mmsa.options import RunParameters

    workdir = Path(workdir).resolve()
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    with serve_folder(site) as base_url:
        db = workdir / "mmsa.duckdb"
        make_dump(site, base_url, n_posts)
        print(f"demo: {n_posts} generated posts served from {base_url}; scoring them with the shipped model "
              "(a first run also exports it to ONNX first)", flush=True)
        params = RunParameters(db=str(db), out=str(workdir / "parquet"), allow_hosts=["127.0.0.1"], force=True)
        summary = score_flow(dump=f"{base_url}/posts.jsonl", params=params, progress=True)
    print("\n" + summary.describe())
    print(f"\nParquet: {workdir / 'parquet'}\nDuckDB:  {db}  (view post_sentiment, table rejected_posts)\n")
    print("daily_brand_sentiment:")
    print(report.format_table(report.run_report("daily_brand_sentiment", db)))
