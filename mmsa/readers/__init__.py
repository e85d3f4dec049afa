"""Readers: one platform record in, rows of the flat post contract out.

A reader is a function `read(record: dict) -> Iterator[dict | Skip]`. Each dict it yields is one post
in the flat contract (`post_id`, `created_at`, `text`, `image_urls`, `brand`, `source`, `lang`,
`author`, `likes`, `shares`, `replies`; any other key goes to `extra`), which mmsa.source then
validates like any flat row. A `Skip` is a record that is not a post (a Jetstream like or delete, a
Reddit comment in a submissions file): counted, never rejected. A reader raises ValueError for a
record of its platform that it cannot read, and that record is rejected with the reason.

One record can hold several posts (an X API v2 response page); every one is accounted for.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass(frozen=True)
class Skip:
    """A record that is not a post; `reason` is the key it is counted under (e.g. "bluesky: like")."""

    reason: str


Reader = Callable[[dict], Iterator["dict | Skip"]]


def unescape(value: object) -> str | None:
    """Text or URL with HTML entities decoded (Reddit and X escape `&`, `<`, `>` in their JSON)."""
    if not isinstance(value, str):
        return None
    return html.unescape(value)


class _Text(HTMLParser):
    """Collects the text of an HTML fragment, with a line break for each paragraph and <br>."""

    _BREAKS = frozenset({"p", "br", "div", "li", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0  # inside <span class="invisible">: Mastodon hides URL scheme and tail there

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self._BREAKS and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")
        if tag == "span" and ("class", "invisible") in attrs:
            self._hidden += 1
        elif tag == "span" and self._hidden:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._hidden:
            self._hidden -= 1
        if tag in self._BREAKS and tag != "br" and self.parts and not self.parts[-1].endswith("\n"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_to_text(fragment: object) -> str | None:
    """Plain text of an HTML fragment (Mastodon's `content`): tags dropped, entities decoded,
    paragraphs and <br> as line breaks."""
    if not isinstance(fragment, str):
        return None
    parser = _Text()
    parser.feed(fragment)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    return "\n".join(line for line in lines if line) or None


def dedupe(urls: list[str | None]) -> list[str]:
    """The non-blank URLs, first occurrence kept, in order."""
    out: list[str] = []
    for url in urls:
        if isinstance(url, str) and url.strip() and url.strip() not in out:
            out.append(url.strip())
    return out


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
    if "data" in record and isinstance(record["data"], (list, dict)):
        return "x-v2"
    if "did" in record and "kind" in record:
        return "bluesky-jetstream"
    if "subreddit" in record or "created_utc" in record:
        return "reddit"
    if "account" in record and ("content" in record or "reblog" in record):
        return "mastodon"
    return "flat"


def auto(record: dict) -> Iterator[dict | Skip]:
    """Read a record with the reader its own shape calls for (a dump mixing formats reads too)."""
    return reader(detect(record))(record)
