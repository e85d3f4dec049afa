"""Bluesky Jetstream events, one JSON object per line:
`{"did", "time_us", "kind": "commit", "commit": {"collection", "operation", "rkey", "record"}}`.

Only the creation of a post (`app.bsky.feed.post`, operation `create`) is a post; every other event
(likes, reposts, follows, deletes, identity and account events) is skipped and counted. The data
carries no image URL, only each picture's blob CID: the picture is read from Bluesky's CDN,
`https://cdn.bsky.app/img/feed_fullsize/plain/{did}/{cid}@jpeg` (`$MMSA_BLUESKY_CDN` replaces everything
before `/{did}`: a caching mirror, or a test server). Pictures sit in an `app.bsky.embed.images` embed, or in
the `media` of an `app.bsky.embed.recordWithMedia` (a quote post with pictures). A video
(`app.bsky.embed.video`, there too) gives its poster frame, as X's and Mastodon's do, from Bluesky's video
service: `https://video.bsky.app/watch/{did, percent-encoded}/{cid}/thumbnail.jpg` (`$MMSA_BLUESKY_VIDEO_CDN`
replaces everything before `/{did}`). The post id is its AT URI, `at://{did}/app.bsky.feed.post/{rkey}`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote

from mmsa.readers.common import Skip, dedupe

POST = "app.bsky.feed.post"
CDN = "https://cdn.bsky.app/img/feed_fullsize/plain"
VIDEO_CDN = "https://video.bsky.app/watch"


def read(record: dict) -> Iterator[dict | Skip]:
    kind = record.get("kind")
    if not kind:
        raise ValueError("unknown format: not a Jetstream event (no kind)")
    if kind != "commit":
        yield Skip(f"bluesky: {kind} event")
        return
    commit = record.get("commit")
    if not isinstance(commit, dict):
        raise ValueError("Jetstream commit event without a `commit` object")
    collection = str(commit.get("collection") or "unknown")
    if collection != POST:
        yield Skip(f"bluesky: {collection.rsplit('.', 1)[-1]}")  # like, repost, follow, ...
        return
    if commit.get("operation") != "create":
        yield Skip(f"bluesky: post {commit.get('operation') or 'unknown'}")  # delete, update
        return
    post = commit.get("record")
    if not isinstance(post, dict):
        raise ValueError("Jetstream post create without a `record` object")
    did, rkey = record.get("did"), commit.get("rkey")
    langs = post.get("langs")
    pictures, videos = _media_cids(post.get("embed"))
    cdn = os.environ.get("MMSA_BLUESKY_CDN", CDN).rstrip("/")
    video_cdn = os.environ.get("MMSA_BLUESKY_VIDEO_CDN", VIDEO_CDN).rstrip("/")
    yield {
        "post_id": f"at://{did}/{POST}/{rkey}" if did and rkey else None,
        "created_at": post.get("createdAt") or record.get("time_us"),
        "text": post.get("text"),
        "image_urls": dedupe([f"{cdn}/{did}/{cid}@jpeg" for cid in pictures]
                             + [f"{video_cdn}/{quote(str(did), safe='')}/{cid}/thumbnail.jpg" for cid in videos]),
        "source": "bluesky",
        "lang": langs if isinstance(langs, list) and langs else None,  # the post's languages: validate picks one
        "author": did,
    }


def _media_cids(embed: object) -> tuple[list[str], list[str]]:
    """The blob CIDs of the embed's pictures and of its video."""
    if not isinstance(embed, dict):
        return [], []
    kind = embed.get("$type")
    if kind == "app.bsky.embed.recordWithMedia":
        return _media_cids(embed.get("media"))
    if kind == "app.bsky.embed.video":
        cid = _cid(embed.get("video"))
        return [], [cid] if cid else []
    if kind != "app.bsky.embed.images":
        return [], []
    cids = [_cid((item or {}).get("image")) for item in embed.get("images") or []]
    return [cid for cid in cids if cid], []


def _cid(blob: object) -> str | None:
    if not isinstance(blob, dict):
        return None
    ref = blob.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else blob.get("cid")  # legacy blobs: a bare `cid`
    return cid if isinstance(cid, str) and cid else None
