"""A small scored-post database with planted patterns, for checking report numbers exactly.

Two weeks, Mon 2024-03-04 .. Sun 2024-03-17, two brands, model version v2 (the latest):

acme    normal days alternate 4 posts (2 pos, 1 neu, 1 neg; days 0, 2, 4, ...) and 6 posts
        (3 pos, 2 neu, 1 neg; days 1, 3, 5, ...). SPIKE_DAY (Thu 03-14, day 10) instead has
        10 posts from reddit: 1 pos, 1 neu, 8 neg; its negatives have likes 100..800.
        week 1: 34 posts (17 pos, 10 neu, 7 neg); week 2: 42 posts (17 pos, 11 neu, 14 neg).
        Source twitter (spike day: reddit), language en.
globex  week 1: 2 posts a day (1 pos, 1 neg); week 2: 3 a day (2 pos, 1 neg).
        Source instagram; language de in week 1, en in week 2.

Scores: positive 0.75, neutral 0, negative -0.75, except MOST_POSITIVE (0.95) and MOST_NEGATIVE
(-0.96). Engagement: likes 5 + shares 1 + replies 0 = 6, except the spike negatives (likes
100*k), SARCASM_TOP (likes 500) and NO_ENGAGEMENT (all NULL = 0).

Images: acme positive and negative posts have an agreeing image, neutral ones none
(image_status no_image), except: the spike-day neutral has a positive image (disagrees, not
opposite), OPPOSITE_ACME is negative text + positive image, and the two neutrals of 03-05 have
image_status fetch_error. globex posts all have images; in week 2 the first positive post of
each day has a negative image (7 opposite posts, sarcasm).

Stale rows: model v1 (run-0, scored earlier) scored globex week 1 as all neutral; reports
must ignore them unless model_version='v1' is asked for.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from mmsa import store
from mmsa.schema import REJECTED_SCHEMA, SCORED_SCHEMA

DAYS = [date(2024, 3, 4) + timedelta(days=i) for i in range(14)]
SPIKE_DAY = date(2024, 3, 14)
MOST_POSITIVE = "acme-0306-00"
MOST_NEGATIVE = "acme-0314-02"
OPPOSITE_ACME = "acme-0304-03"
NO_ENGAGEMENT = "acme-0305-00"
SARCASM_TOP = "globex-0315-00"

PROBS = {"positive": (0.8, 0.15, 0.05), "neutral": (0.2, 0.6, 0.2), "negative": (0.05, 0.15, 0.8)}
RUN_AT = {
    "run-0": datetime(2024, 3, 11, 1, tzinfo=timezone.utc),
    "run-1": datetime(2024, 3, 18, 1, tzinfo=timezone.utc),
    "run-2": datetime(2024, 3, 18, 2, tzinfo=timezone.utc),
}


def _labels(brand: str, i: int, day: date) -> list[str]:
    if brand == "globex":
        return ["positive", "negative"] if i < 7 else ["positive", "positive", "negative"]
    if day == SPIKE_DAY:
        return ["positive", "neutral"] + ["negative"] * 8
    if i % 2 == 0:
        return ["positive", "positive", "neutral", "negative"]
    return ["positive", "positive", "positive", "neutral", "neutral", "negative"]


def _row(brand: str, i: int, day: date, n: int, label: str, model: str, run: str) -> dict:
    post_id = f"{brand}-{day:%m%d}-{n:02d}"
    probs = {MOST_POSITIVE: (0.96, 0.03, 0.01), MOST_NEGATIVE: (0.01, 0.02, 0.97)}.get(post_id, PROBS[label])
    likes, shares, replies = 5, 1, 0
    if post_id == NO_ENGAGEMENT:
        likes = shares = replies = None
    elif post_id == SARCASM_TOP:
        likes = 500
    elif day == SPIKE_DAY and label == "negative":
        likes = 100 * (n - 1)  # n = 2..9 -> 100..800
    image = label if label != "neutral" else None
    status = "ok" if image else "no_image"
    if brand == "acme" and day == SPIKE_DAY and label == "neutral":
        image, status = "positive", "ok"
    if post_id == OPPOSITE_ACME:
        image = "positive"
    if brand == "acme" and day == date(2024, 3, 5) and label == "neutral":
        status = "fetch_error"
    if brand == "globex" and i >= 7 and n == 0:
        image = "negative"
    image_probs = PROBS[image] if image else (None, None, None)
    return {
        "post_id": post_id,
        "created_at": datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc) + timedelta(minutes=7 * n),
        "text": f"{label} post {n} about {brand}",
        "image_urls": [] if status == "no_image" else [f"https://img.example/{post_id}.jpg"],
        "brands": [brand],
        "source": "instagram" if brand == "globex" else ("reddit" if day == SPIKE_DAY else "twitter"),
        "lang": "de" if brand == "globex" and i < 7 else "en",
        "author": f"user{n}",
        "likes": likes,
        "shares": shares,
        "replies": replies,
        "extra": None,
        "image_status": status,
        "label": label,
        "p_positive": probs[0],
        "p_neutral": probs[1],
        "p_negative": probs[2],
        "sentiment_score": probs[0] - probs[2],
        "text_label": label,
        "text_p_positive": probs[0],
        "text_p_neutral": probs[1],
        "text_p_negative": probs[2],
        "image_label": image,
        "image_p_positive": image_probs[0],
        "image_p_neutral": image_probs[1],
        "image_p_negative": image_probs[2],
        "images": [] if status == "no_image" else [{
            "position": 0, "image_url": f"https://img.example/{post_id}.jpg", "image_status": status,
            "image_label": image, "image_p_positive": image_probs[0], "image_p_neutral": image_probs[1],
            "image_p_negative": image_probs[2]}],
        # The sentiment toward the brand: the post's own (as before the target-aware head).
        "brand_scores": [{"brand": brand, "brand_label": label,
                          **{f"brand_p_{lab}": x for lab, x in zip(("positive", "neutral", "negative"), probs)}}],
        "model_version": model,
        "run_id": run,
        "scored_at": RUN_AT[run],
    }


def scored_rows() -> list[dict]:
    """Every planted scored_posts row (v2 for all posts, plus the stale v1 rows)."""
    rows = []
    for brand in ("acme", "globex"):
        for i, day in enumerate(DAYS):
            for n, label in enumerate(_labels(brand, i, day)):
                rows.append(_row(brand, i, day, n, label, "v2", "run-1" if i < 7 else "run-2"))
                if brand == "globex" and i < 7:
                    rows.append(_row(brand, i, day, n, "neutral", "v1", "run-0"))
    return rows


REJECTED = [
    {"post_id": None, "reason": "missing post_id", "raw": '{"brand": "acme", "text": "hi"}',
     "dump": "dump-w1.jsonl", "line": 7, "run_id": "run-1"},
    {"post_id": "globex-x", "reason": "invalid created_at", "raw": '{"brand": "globex", "created_at": "soon"}',
     "dump": "dump-w1.jsonl", "line": 9, "run_id": "run-1"},
    {"post_id": None, "reason": "not JSON", "raw": "garbage {", "dump": "dump-w2.jsonl", "line": 3, "run_id": "run-2"},
]

RUNS = [
    # run_id, dump, model, posts_in, posts_scored, posts_rejected, image_status
    ("run-0", "dump-w1.jsonl", "v1", 14, 14, 0, {"ok": 14}),
    ("run-1", "dump-w1.jsonl", "v2", 50, 48, 2, {"ok": 38, "no_image": 8, "fetch_error": 2}),
    ("run-2", "dump-w2.jsonl", "v2", 64, 63, 1, {"ok": 53, "no_image": 10}),
]


def build(path: Path) -> Path:
    """Create the planted database at `path` through the store's own DDL and return the path."""
    con = store.connect(path)
    try:
        con.register("planted", pa.Table.from_pylist(scored_rows(), schema=SCORED_SCHEMA))
        con.execute("INSERT INTO scored_posts SELECT * FROM planted")
        rejected = [{**r, "rejected_at": RUN_AT[r["run_id"]]} for r in REJECTED]
        con.register("planted_rejected", pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA))
        con.execute("INSERT INTO rejected_posts SELECT * FROM planted_rejected")
        for run_id, dump, model, posts_in, scored, rejected_n, status in RUNS:
            store.record_run(con, {
                "run_id": run_id, "dump": dump, "model_version": model,
                "started_at": RUN_AT[run_id] - timedelta(minutes=30), "finished_at": RUN_AT[run_id],
                "posts_in": posts_in, "posts_scored": scored, "posts_rejected": rejected_n,
                "image_status": status, "stage_seconds": {"infer": 12.5},
            })
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return path
