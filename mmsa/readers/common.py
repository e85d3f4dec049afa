"""What every reader shares: the `Skip` marker, the text and URL clean-ups platforms need, and what a count is."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from html.parser import HTMLParser

MAX_COUNT = 10 ** 15  # likes, shares, replies: more is a broken record, and a report's sum of three stays in BIGINT
# Thousands, one separator throughout; a dot only twice or more (1.234.567): pandas' "%.3f" writes 5.000 for 5.
_GROUPED = re.compile(r"^\s*\d{1,3}(?:([,' \u00a0\u202f])\d{3}(?:\1\d{3})*|(?:\.\d{3}){2,})\s*$")


@dataclass(frozen=True)
class Skip:
    """A record that is not a post; `reason` is the key it is counted under (e.g. "bluesky: like")."""

    reason: str


Reader = Callable[[dict], Iterator["dict | Skip | str"]]


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


def count(value: object) -> int | None:
    """A count (likes, shares, replies) as a whole number from 0 to MAX_COUNT, however an export wrote it; ValueError
    when it is none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError("not a count")
    if isinstance(value, str) and _GROUPED.match(value):  # 1,234 (a spreadsheet's formatted cell), 1 234, 1'234
        value = re.sub(r"\D", "", value)
    if not isinstance(value, int):  # 12.0 (a CSV of pandas' floats), 1e3, a Decimal column: whole numbers too
        try:
            value = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError("not a number") from None
        if not value.is_finite() or value != value.to_integral_value():
            raise ValueError("not a whole number")
    if not 0 <= value < MAX_COUNT:  # compared before int(): 1e999999999 would be a billion-digit int
        raise ValueError("not a non-negative integer")
    return int(value)
