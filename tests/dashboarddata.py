"""The planted report database (tests/reportdata.py) as an analyst snapshot, plus hostile posts and an image cache.

Hostile rows (model v2, day HOSTILE_DAY = 2024-03-15, not a spike day): a post whose text is a
<script> element, whose author is an <img onerror> element and whose link is a javascript: URL; a
post whose text is a spreadsheet formula; and a brand whose name is markup. The image cache holds
pictures for the acme posts of the spike day and for the globex sarcasm posts, so thumbnails show
there and nowhere else.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import reportdata

from mmsa import publish, store
from mmsa.demo import _image
from mmsa.images.cache import ImageCache
from mmsa.images.status import FetchResult
from mmsa.schema import SCORED_SCHEMA

HOSTILE_DAY = "2024-03-15"
SCRIPT_TEXT = "<script>window.__pwned = 1</script> hostile post"
IMG_AUTHOR = '<img src=x onerror="window.__pwned = 2">'
JS_LINK = "javascript:window.__pwned = 3"
FORMULA_TEXT = '=HYPERLINK("http://evil.example","click")'
MARKUP_BRAND = "<b onmouseover=alert(4)>evil</b>"


def hostile_rows() -> list[dict]:
    base = next(r for r in reportdata.scored_rows() if r["post_id"] == "acme-0315-00" and r["model_version"] == "v2")
    at = datetime(2024, 3, 15, 12, tzinfo=timezone.utc)
    return [
        {**base, "post_id": "evil-script", "created_at": at, "text": SCRIPT_TEXT, "author": IMG_AUTHOR,
         "extra": json.dumps({"url": JS_LINK}), "image_urls": ["javascript:alert(5)"],
         "images": [{**base["images"][0], "image_url": "javascript:alert(5)"}] if base["images"] else [], "likes": 9000},
        {**base, "post_id": "evil-formula", "created_at": at, "text": FORMULA_TEXT, "likes": 8000,
         "extra": json.dumps({"url": "https://social.example/p/evil-formula"})},
        {**base, "post_id": "evil-brand", "created_at": at, "brands": [MARKUP_BRAND], "text": "a brand named in markup"},
    ]


def cached_urls() -> dict[str, str]:
    """image URL -> label of the image drawn for it."""
    urls = {}
    for r in reportdata.scored_rows():
        if r["model_version"] == "v2" and r["image_urls"] and (
                r["post_id"].startswith("acme-0314") or r["text_label"] != r["image_label"]):
            urls[r["image_urls"][0]] = r["image_label"] or "neutral"
    return urls


def build(folder: Path) -> tuple[Path, Path]:
    """Write the pipeline database, publish its snapshot and fill an image cache; (snapshot, cache)."""
    db = reportdata.build(folder / "planted.duckdb")
    with store.connect(db) as con:
        con.register("hostile", pa.Table.from_pylist(hostile_rows(), schema=SCORED_SCHEMA))
        con.execute("INSERT INTO scored_posts SELECT * FROM hostile")
    snapshot = publish.publish_snapshot(db)
    cache = ImageCache(folder / "cache")
    rng = random.Random(3)
    for url, label in sorted(cached_urls().items()):
        buf = io.BytesIO()
        _image(label, rng).save(buf, format="JPEG", quality=85)
        key = hashlib.sha256(buf.getvalue()).hexdigest()
        cache.store(key, buf.getvalue())
        cache.record(url, FetchResult(post_id="", url=url, status="ok", image_key=key))
    return snapshot, folder / "cache"

