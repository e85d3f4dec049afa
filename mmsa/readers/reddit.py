"""Reddit submissions and comments as Pushshift / Arctic Shift dumps have them (one JSON object per line).

Text: `title`, a blank line, `selftext`; a comment's `body`. Reddit's notices in place of removed or deleted
text ("[removed]", "[deleted by user]", "[ Removed by reddit on account of violating the content policy. ]")
are no one's words: left out, and a record left with nothing is skipped. Entities decoded. `selftext` and `body`
are markdown (Reddit escapes it once more): they are read as Reddit shows them, without emphasis marks, link
targets, quote and list marks (the model and the analysts read words, not `**`); code stays as written.
Images, in order: a gallery's pictures (`media_metadata[id].s.u`, ordered by `gallery_data.items`),
else the picture the post links to (`url` on i.redd.it or ending in an image extension), else the
preview pictures (`preview.images[].source.url`); a crosspost without pictures of its own has its original's
(`crosspost_parent_list`). A linked picture's preview is the same picture,
so it is not added as a second one. Reddit HTML-escapes these URLs (`&amp;`); they are decoded.
A comment (it has `body`, no `title`) has the pictures of its `media_metadata`.

`score` can be negative (down-votes); `likes` is that score floored at 0, the raw score stays in
`extra`. `shares` is `num_crossposts`, `replies` is `num_comments`. Post ids are Reddit's fullnames
(`t3_` + id for a submission, `t1_` + id for a comment), unique across subreddits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

from mmsa.readers.common import Skip, dedupe, unescape

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
# Reddit's notices in place of removed or deleted text, whole: "[removed]", "[deleted by user]", "[ Removed by
# Reddit ]", "[ Removed by reddit on account of violating the [content policy](/help/contentpolicy). ]" (not a
# title such as "[Deleted scene] from Alien [1979]").
_GONE = re.compile(r"\[\s*(?:removed|deleted)(?:\s+by\s+(?:user|reddit|moderator)\b(?:[^\[\]]|\[[^\[\]]*\]\([^()]*\))*)?\]",
                   re.IGNORECASE)
# Reddit's markdown is CommonMark with ~~strikethrough~~; it shows HTML tags as typed ("<3" is words).
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")
# A character that shows: the editor's &#x200B; alone (a blank line kept) is no text.
_VISIBLE = re.compile(r"[^\s\u200b-\u200d\u2060\ufeff]")
# What markdown could make of a text: without any of it the text is as shown, and parsing it (20-100 µs) is skipped.
_MARKUP = re.compile(r"[*_~\[\]`\\>#&<]|^(?: {4}|\t| {0,3}(?:[-+*]|\d+[.)]|=+|-+)(?:\s|$))", re.MULTILINE)


def read(record: dict) -> Iterator[dict | Skip]:
    comment = "title" not in record
    if comment and "body" not in record:
        raise ValueError("unknown format: not a Reddit submission or comment (no title, no body)")
    kind = "t1_" if comment else "t3_"
    raw_id = record.get("id")
    name = record.get("name")
    post_id = name if isinstance(name, str) and name.startswith(kind) else (None if raw_id in (None, "") else f"{kind}{raw_id}")
    title = "" if comment else _words(unescape(record.get("title")))
    body = _plain(_words(unescape(record.get("body" if comment else "selftext"))))
    text = "\n\n".join(part for part in (title, body) if part).strip()
    pictures = _own_images(record) if comment else images(record)
    if not text and not pictures:
        yield Skip("reddit: removed or deleted")
        return
    score = record.get("score")
    likes = None
    if isinstance(score, (int, float)) or (isinstance(score, str) and score.lstrip("-").isdigit()):
        likes = max(int(score), 0)
    row = {
        "post_id": post_id,
        "created_at": record.get("created_utc"),
        "text": text or None,
        "image_urls": pictures,
        "source": "reddit",
        "author": record.get("author"),
        "likes": likes,
        "shares": record.get("num_crossposts"),
        "replies": record.get("num_comments"),
        "subreddit": record.get("subreddit"),
        "permalink": record.get("permalink"),
    }
    if comment:
        row |= {"link_id": record.get("link_id"), "parent_id": record.get("parent_id")}
    if score is not None:
        row["score"] = score
    yield row


def _words(text: str | None) -> str:
    """The text, or "" when it is Reddit's notice that it was removed or deleted."""
    return "" if not text or _GONE.fullmatch(text.strip()) else text


def _plain(markdown: str) -> str:
    """The words of a markdown text, a blank line between its paragraphs, list items and quotes; a numbered item's
    number ("2024. What a year" is a list of one item to markdown), a picture's alt text and code as written (an
    indented line is code in markdown, and often only a user's indentation)."""
    if not _MARKUP.search(markdown):
        return markdown if _VISIBLE.search(markdown) else ""
    blocks, number = [], ""
    for token in _MARKDOWN.parse(markdown):
        if token.type == "list_item_open" and token.info:  # an ordered item: its number and . or )
            number = f"{token.info}{token.markup} "
        elif token.type == "list_item_close":  # an empty item's number is not the next paragraph's
            number = ""
        elif token.type == "inline":
            blocks.append(number + "".join(child.content if child.type in ("text", "code_inline", "image") else "\n"
                                           for child in token.children or ()
                                           if child.type in ("text", "code_inline", "image", "softbreak", "hardbreak")))
            number = ""
        elif token.type in ("code_block", "fence"):
            blocks.append(token.content.rstrip("\n"))
    if not blocks:  # markdown makes nothing of it (quotes nested past its limit, a rule alone): as written
        return markdown.strip()
    return "\n\n".join(block for block in blocks if _VISIBLE.search(block))


def images(record: dict) -> list[str]:
    """The submission's pictures, in order, de-duplicated (see the module docstring)."""
    own = _own_images(record)
    parents = record.get("crosspost_parent_list")
    if not own and isinstance(parents, list) and parents and isinstance(parents[0], dict):
        return _own_images(parents[0])
    return own


def _own_images(record: dict) -> list[str]:
    metadata = record.get("media_metadata")
    gallery = (record.get("gallery_data") or {}).get("items")
    if isinstance(metadata, dict) and metadata:
        order = [item.get("media_id") for item in gallery or [] if isinstance(item, dict)] or list(metadata)
        urls = []
        for media_id in order:
            meta = metadata.get(media_id)
            if not isinstance(meta, dict) or meta.get("status", "valid") != "valid":
                continue
            source = meta.get("s") or {}
            urls.append(unescape(source.get("u") or source.get("gif")))
        if dedupe(urls):
            return dedupe(urls)
    url = unescape(record.get("url_overridden_by_dest") or record.get("url"))
    if url and (record.get("post_hint") == "image" or _is_image_link(url)):
        return dedupe([url])
    previews = ((record.get("preview") or {}).get("images")) or []
    return dedupe([unescape((p.get("source") or {}).get("url")) for p in previews if isinstance(p, dict)])


def _is_image_link(url: str) -> bool:
    parts = urlsplit(url)
    return parts.netloc == "i.redd.it" or parts.path.lower().endswith(_IMAGE_EXTENSIONS)
