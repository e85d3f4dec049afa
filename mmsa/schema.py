"""The data contract shared by every stage: input post fields, labels, and the scored-row schema.

One home for column names and types so that source, store, SQL and tests cannot drift apart.
"""

from __future__ import annotations

import pyarrow as pa

# Class order of every probability vector in the project (model outputs, stored columns).
LABELS: tuple[str, ...] = ("positive", "neutral", "negative")

# Input post fields. post_id and created_at are required; the rest may be missing or null.
# Input may also name one image `image_url` and one brand `brand`; they join the lists.
REQUIRED_FIELDS = ("post_id", "created_at")
TEXT_FIELDS = ("text", "source", "lang", "author")
LIST_FIELDS = ("image_urls", "brands")
COUNT_FIELDS = ("likes", "shares", "replies")
KNOWN_FIELDS = REQUIRED_FIELDS + TEXT_FIELDS + LIST_FIELDS + COUNT_FIELDS + ("image_url", "brand")

# A validated post as it travels between stages (shard files). Unknown input columns are
# kept, as one JSON object, in `extra`. image_urls: in the post's order, at most the cap;
# brands: the dump's own brand and those the brand rules found, each once (empty: untagged).
POST_SCHEMA = pa.schema(
    [
        ("post_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("text", pa.string()),
        ("image_urls", pa.list_(pa.string())),
        ("brands", pa.list_(pa.string())),
        *[(name, pa.string()) for name in TEXT_FIELDS[1:]],
        *[(name, pa.int64()) for name in COUNT_FIELDS],
        ("extra", pa.string()),
    ]
)


def _probs(prefix: str) -> list[tuple[str, pa.DataType]]:
    return [(f"{prefix}p_{label}", pa.float64()) for label in LABELS]


# One image of a scored post: where it sits in the post, what happened to it, and the image
# branch's prediction on it alone (null unless its status is ok).
IMAGE_TYPE = pa.struct(
    [
        ("position", pa.int32()),
        ("image_url", pa.string()),
        ("image_status", pa.string()),
        ("image_label", pa.string()),
        *_probs("image_"),
    ]
)

# Why a post is stored without a prediction; NULL for a scored post.
UNSUPPORTED_LANGUAGE = "unsupported_language"  # its lang is not one its model covers (config.json "languages")
NOTHING_TO_READ = "no_text_and_no_usable_image"  # no text, and none of its images could be fetched and decoded

# The sentiment toward one brand the post names (mmsa.targeted), in the order of the post's `brands`.
BRAND_TYPE = pa.struct([("brand", pa.string()), ("brand_label", pa.string()), *_probs("brand_")])

# One scored post: the post, what happened to its images, the fused prediction and the
# per-modality predictions beside it (null where that modality was not available).
# image_status summarises the post: ok when any image was usable, no_image without images,
# else the first image's failure; NULL for a post not scored (its images are not fetched).
# image_* is the mean over the post's usable images.
SCORED_SCHEMA = pa.schema(
    [
        *POST_SCHEMA,
        ("image_status", pa.string()),
        ("unscored_reason", pa.string()),
        ("label", pa.string()),
        *_probs(""),
        ("sentiment_score", pa.float64()),
        ("text_label", pa.string()),
        *_probs("text_"),
        ("image_label", pa.string()),
        *_probs("image_"),
        ("images", pa.list_(IMAGE_TYPE)),
        ("brand_scores", pa.list_(BRAND_TYPE)),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)

# The columns a post not scored keeps: the post, what happened to it, provenance. Every other column of
# SCORED_SCHEMA is a prediction, and NULL for such a post (mmsa.pipeline.scored_table).
UNSCORED_KEEPS = frozenset(
    [*POST_SCHEMA.names, "image_status", "unscored_reason", "images", "model_version", "run_id", "scored_at"]
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
        ("file", pa.string()),  # the file of a many-file dump the row came from (line is within it)
        ("dump_key", pa.string()),  # the dump's bytes (mmsa.source.files_key): a rerun of them replaces these rows,
        ("dump_head", pa.string()),  # its first record: so does a rerun of the same path whose file kept it (it grew)
    ]
)
