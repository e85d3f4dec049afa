"""The data contract shared by every stage: input post fields, labels, and the scored-row schema.

One home for column names and types so that source, store, SQL and tests cannot drift apart.
"""

from __future__ import annotations

import pyarrow as pa

# Class order of every probability vector in the project (model outputs, stored columns).
LABELS: tuple[str, ...] = ("positive", "neutral", "negative")

# Input post fields. post_id and created_at are required; the rest may be missing or null.
REQUIRED_FIELDS = ("post_id", "created_at")
TEXT_FIELDS = ("text", "image_url", "brand", "source", "lang", "author")
COUNT_FIELDS = ("likes", "shares", "replies")
KNOWN_FIELDS = REQUIRED_FIELDS + TEXT_FIELDS + COUNT_FIELDS

# A validated post as it travels between stages (shard files). Unknown input columns are
# kept, as one JSON object, in `extra`.
POST_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        *[(name, pa.string()) for name in TEXT_FIELDS],
        *[(name, pa.int64()) for name in COUNT_FIELDS],
        ("extra", pa.string()),
    ]
)


def _probs(prefix: str) -> list[tuple[str, pa.DataType]]:
    return [(f"{prefix}p_{label}", pa.float64()) for label in LABELS]


# One scored post: the post, what happened to its image, the fused prediction and the
# per-modality predictions beside it (null where that modality was not available).
SCORED_SCHEMA = pa.schema(
    [
        *POST_SCHEMA,
        ("image_status", pa.string()),
        ("label", pa.string()),
        *_probs(""),
        ("sentiment_score", pa.float64()),
        ("text_label", pa.string()),
        *_probs("text_"),
        ("image_label", pa.string()),
        *_probs("image_"),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)

REJECTED_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
        ("dump", pa.string()),
        ("line", pa.int64()),
        ("run_id", pa.string()),
        ("rejected_at", pa.timestamp("us", tz="UTC")),
    ]
)
