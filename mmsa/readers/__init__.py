"""Readers: one platform record in, rows of the flat post contract out.

A reader is a function `read(record: dict) -> Iterator[dict | Skip | str]`. Each dict it yields is one post
in the flat contract (`post_id`, `created_at`, `text`, `image_urls`, `brand`, `source`, `lang`,
`author`, `likes`, `shares`, `replies`; any other key goes to `extra`), which mmsa.source then
validates like any flat row. A `Skip` is a record that is not a post (a Jetstream like or delete, a
Reddit record whose text was removed): counted, never rejected. A reader raises ValueError for a
record of its platform that it cannot read, and that record is rejected with the reason.

One record can hold several posts (an X API v2 response page); every one is accounted for: one of them that
cannot be read is yielded as its rejection reason (a str), and the record's others are still read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from mmsa.readers.common import Reader, Skip  # noqa: F401  (the readers' API)


@functools.cache
def _registry() -> dict[str, Reader]:
    from mmsa.readers import bluesky, flat, mastodon, reddit, x_v2

    return {"flat": flat.read, "x-v2": x_v2.read, "reddit": reddit.read,
            "bluesky-jetstream": bluesky.read, "mastodon": mastodon.read}


FORMATS = ("flat", "x-v2", "reddit", "bluesky-jetstream", "mastodon")


def reader(name: str) -> Reader:
    readers = _registry()
    if name not in readers:
        raise ValueError(f"unknown source format {name!r}: expected one of {', '.join(FORMATS)}")
    return readers[name]


def detect(record: dict) -> str:
    """The format a record's shape says it is; "flat" when no platform's shape fits (its validation
    then says what is missing). Keys only, so it costs little per record."""
    if "post_id" in record:
        return "flat"
    if "data" in record and isinstance(record["data"], (list, dict)) or set(record) <= {"errors", "title", "detail", "type"} \
            and isinstance(record.get("errors"), list) or set(record) == {"meta"}:  # an X page, or its page of errors
        return "x-v2"  # only or of no results (`meta` alone; both skipped, counted)
    if "data" not in record and ("__twarc" in record or "edit_history_tweet_ids" in record
                                 or {"id", "text", "author_id"} <= set(record)):  # one tweet a line (twarc2 flatten)
        return "x-v2"
    if "did" in record and "kind" in record:
        return "bluesky-jetstream"
    if "subreddit" in record or "created_utc" in record:
        return "reddit"
    if "account" in record and ("content" in record or "reblog" in record):
        return "mastodon"
    return "flat"


def auto(record: dict) -> Iterator[dict | Skip | str]:
    """Read a record with the reader its own shape calls for (a dump mixing formats reads too)."""
    return reader(detect(record))(record)
