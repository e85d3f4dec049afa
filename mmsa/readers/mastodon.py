"""Mastodon statuses as the API returns them (one status per line, or a JSON array of them).

`content` is HTML: it becomes plain text (paragraphs and <br> as line breaks, the hidden parts of
links dropped). Pictures are `media_attachments` of type image (`url`); for gifv and video the
`preview_url` still is a picture; of type unknown (media of another server this one did not fetch), its
`remote_url` is tried (the images stage tells whether it is a picture). A content warning (`spoiler_text`) is the status's subject line, shown
above its content: it leads the text. A boost nests the original status under `reblog`: the original
is the post (so many boosts of one status are one post; `reposted_by` keeps the booster). A status id and an
`acct` are only unique on their own server, so the post id is the status's `uri`, unique across servers (its
`id` when it has none), and the author `user@server` (the server from the account's `url`).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from mmsa.readers.common import Skip, dedupe, html_to_text, unescape


def read(record: dict) -> Iterator[dict | Skip]:
    status = record.get("reblog") if isinstance(record.get("reblog"), dict) else record
    if "content" not in status and "media_attachments" not in status:
        raise ValueError("unknown format: not a Mastodon status (no content, no media_attachments)")
    urls = []
    for media in status.get("media_attachments") or []:
        if not isinstance(media, dict):
            continue
        if media.get("type") == "image":
            urls.append(media.get("url") or media.get("preview_url"))
        elif media.get("type") in ("gifv", "video"):
            urls.append(media.get("preview_url"))
        elif media.get("type") == "unknown":  # a remote server's media this one did not fetch: tried at its origin
            urls.append(media.get("remote_url"))
    account = status.get("account") or {}
    warning = status.get("spoiler_text").strip() if isinstance(status.get("spoiler_text"), str) else ""  # plain text
    content = html_to_text(status.get("content"))
    row = {
        "post_id": status.get("uri") or status.get("id"),
        "created_at": status.get("created_at"),
        "text": "\n\n".join(t for t in (warning, content) if t) or None,
        "image_urls": dedupe([unescape(u) for u in urls]),
        "source": "mastodon",
        "lang": status.get("language"),
        "author": _handle(account),
        "likes": status.get("favourites_count"),
        "shares": status.get("reblogs_count"),
        "replies": status.get("replies_count"),
        "url": status.get("url"),
    }
    if status is not record:
        # the boost's own id when its account says nothing: a repost all the same, not a duplicate post
        row["reposted_by"] = _handle(record.get("account") or {}) or f"boost {record.get('uri') or record.get('id')}"
    yield row


def _handle(account: dict) -> str | None:
    """`user@server`: the API's `acct` leaves out the server of an account local to the server asked."""
    acct = account.get("acct")
    server = urlsplit(account.get("url") or "").hostname
    if isinstance(acct, str) and "@" not in acct and server:
        return f"{acct}@{server}"
    return acct
