"""Brand tagging by rules: which brands a post mentions, from a YAML (or JSON) file.

    acme:
      keywords: [acme, acme corp]       # words or phrases, on word boundaries
      hashtags: ["#acme"]               # the tag itself ("#acme", not "#acmeforever")
      handles: ["@acmecorp"]            # a mention of the account
      regexes: ['\\bacme ?(one|pro)\\b']  # anything else, as Python regular expressions

All matching ignores case, accents and strokes, compatibility forms (full-width letters) and the kind of
apostrophe (`fold`: "O’Brien", "Cafe\u0301" and "Orsted" match keywords o'brien, café and ørsted). A post can mention several brands: it
is tagged with each of them; a brand the dump itself gives takes the file's spelling of that name.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import yaml

RULES = ("keywords", "hashtags", "handles", "regexes")
Span = tuple[int, int]
APOSTROPHES = str.maketrans({c: "'" for c in "\u2018\u2019\u02bc\u02bb\u2032\uff07\u00b4`"})  # what keyboards type for '
# Letters that NFKD leaves whole, as people write them without their strokes; marks it would spell as letters
# after a name ("Acme™" as "AcmeTM") end the word instead.
_LETTERS = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ħ": "h",
                          "Ħ": "H", "ı": "i", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ß": "ss", "ẞ": "SS",
                          "þ": "th", "Þ": "TH", "\u2122": " ", "\u2120": " "})
_WORD_CHAR = re.compile(r"\w")
# Kana and Hangul syllables, matched as written: decomposed, 기안 would hold 기아 and ガメラ read as カメラ.
_UNFOLDED = re.compile("[\u3040-\u30ff\uac00-\ud7af]")
# A letter or digit of a script that spaces its words: a keyword touching one is inside a longer word. Han, kana,
# Hangul (whose particles join the noun: "acme는"), Thai, Lao, Khmer and Myanmar run words together, so a name
# touching them is whole.
_SPACED_WORD = r"[^\W\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3130-\u318f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]"
_SPACED_WORD_CHAR = re.compile(_SPACED_WORD)


def fold(text: str) -> tuple[str, list[Span] | None]:
    """(text without accents or strokes (Ø as O, ß as ss), in compatibility form (NFKD: full-width letters as
    ASCII) and with every apostrophe as ', and per character of it the [start, end) of the characters of `text` it comes from, None when it is
    `text` itself): what the rules match, so that a match maps back onto the post's own text."""
    if text.isascii() and "`" not in text:
        return text, None
    out, where = [], []
    for i, c in enumerate(text):
        for d in c if _UNFOLDED.match(c) else unicodedata.normalize("NFKD", c.translate(APOSTROPHES).translate(_LETTERS)):
            if not unicodedata.combining(d):
                out.append(d)
                where.append((i, i + 1))
    return "".join(out), where


def name_key(name: str) -> str:
    """What makes two spellings of a brand's name one name: case, accents, a ™ and spacing aside."""
    return " ".join(fold(name)[0].split()).casefold()


class BrandTagger:
    """Compiled rules: one alternation per brand, so a post costs one search per brand."""

    def __init__(self, rules: dict[str, dict]):
        if not isinstance(rules, dict) or not rules:
            raise ValueError("a brands file maps each brand name to its rules (keywords, hashtags, handles, regexes)")
        self.patterns: dict[str, re.Pattern] = {}
        self.names: dict[str, str] = {}
        for brand, spec in rules.items():
            # A post names a brand once whatever its case and accents (source.validate), so a second spelling
            # would vanish from every post it matched.
            if (first := self.names.setdefault(name_key(str(brand)), str(brand))) != str(brand):
                raise ValueError(f"brands {first!r} and {brand!r} are one name (case and accents aside): "
                                 "merge their rules under one")
            spec = spec or {}
            if not isinstance(spec, dict) or set(spec) - set(RULES):
                raise ValueError(f"brand {brand!r}: rules must be a mapping with keys from {', '.join(RULES)}")
            parts = [_phrase(k) for k in _strings(brand, spec, "keywords")]
            parts += [_tag("#", h) for h in _strings(brand, spec, "hashtags")]
            parts += [_tag("@", h) for h in _strings(brand, spec, "handles")]
            for regex in _strings(brand, spec, "regexes"):
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise ValueError(f"brand {brand!r}: bad regex {regex!r}: {exc}") from None
                parts.append(f"(?:{regex})")
            if not parts:
                raise ValueError(f"brand {brand!r} has no rules")
            self.patterns[str(brand)] = re.compile("|".join(parts), re.IGNORECASE)

    def tag(self, text: str | None) -> list[str]:
        """The brands the text mentions, in the file's order."""
        if not text:
            return []
        folded = fold(text)[0]
        return [brand for brand, pattern in self.patterns.items() if pattern.search(folded)]

    def canonical(self, name: str) -> str:
        """The file's spelling of a brand name given otherwise (a dump's "Acme" for the file's acme), else the name."""
        return self.names.get(name_key(name), name)

    def spans(self, text: str | None, brand: str) -> list[Span]:
        """Where the text mentions `brand` by its rules, as (start, end) characters; the brand's own name
        where the file has no rules for it (a brand from the dump's own field)."""
        pattern = self.patterns.get(brand)
        if pattern is None:
            return find_spans(text, brand, whole_words=True)
        folded, where = fold(text or "")
        found = [m.span() for m in pattern.finditer(folded) if m.end() > m.start()]
        return found if where is None else [(where[a][0], where[b - 1][1]) for a, b in found]


def spans(text: str | None, brand: str, tagger: BrandTagger | None) -> list[Span]:
    """Where the text names the brand: by the brands file's rules, else (no file) by the brand's name, whole words."""
    return tagger.spans(text, brand) if tagger else find_spans(text, brand, whole_words=True)


def find_spans(text: str | None, target: str | None, whole_words: bool = False) -> list[Span]:
    """Every occurrence of `target` in `text`, ignoring case, as (start, end) characters (`whole_words`: only those
    that are whole words when there are any, as brand rules match: the Apple of "my Apple watch", not of
    "Pineapple"; a corpus's targets are found as its target heads were trained); where it does not occur as
    written, its words however spaced and with any apostrophe (a corpus's tokenised "valentine 's day" for
    "Valentine’s Day", "boko haram" for "Boko  Haram")."""
    if not text or not target or not target.strip():
        return []
    found = [m.span() for m in re.finditer(re.escape(target.strip()), text, re.IGNORECASE)]
    whole = [(a, b) for a, b in found if whole_words and _whole(text, a, b)]
    if found:  # else inside a word ("#AppleEvent")
        return whole or found
    words = re.findall(r"\w+|[^\w\s]", target.translate(APOSTROPHES))  # words and marks: "valentine", "'", "s"
    pattern = re.escape(words[0])
    for before, word in zip(words, words[1:]):  # two words need a space between them, a mark none
        pattern += (r"\s+" if _WORD_CHAR.match(before[-1]) and _WORD_CHAR.match(word[0]) else r"\s*") + re.escape(word)
    return [m.span() for m in re.finditer(pattern, text.translate(APOSTROPHES), re.IGNORECASE)]  # 1:1: same offsets


def _whole(text: str, a: int, b: int) -> bool:
    """Whether text[a:b] is not part of a longer word of a spaced script."""
    inside = _SPACED_WORD_CHAR.match
    return not ((a > 0 and inside(text[a - 1]) and inside(text[a])) or (b < len(text) and inside(text[b]) and inside(text[b - 1])))


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: a brand written twice would keep only its
    last rules, silently. A key is read as it is written: brands named `on`, `no` or `1800` are names, not
    YAML's booleans and numbers."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key_node.tag = "tag:yaml.org,2002:str"
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):  # `? [a, b]`: a list as a key
                raise ValueError(f"a key that is not a name (line {key_node.start_mark.line + 1}): keys are names")
            if key in seen:
                raise ValueError(f"{key} given twice (again on line {key_node.start_mark.line + 1}): each key once")
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line, with where it is ("expected ',' or ']', but got '<stream end>' (line 2, column 1)")."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}{where}"


def load_rules(path: str | Path) -> dict:
    """The rules of a brands file, checked (a ValueError says what is wrong), as plain data."""
    try:
        rules = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeys)  # _UniqueKeys is a SafeLoader
    except yaml.YAMLError as exc:
        raise ValueError(f"brands file {path}: not YAML or JSON: {yaml_problem(exc)}") from None
    except ValueError as exc:  # _UniqueKeys
        raise ValueError(f"brands file {path}: {exc}") from None
    try:
        BrandTagger(rules)
    except ValueError as exc:
        raise ValueError(f"brands file {path}: {exc}") from None
    return rules


def _strings(brand: str, spec: dict, key: str) -> list[str]:
    values = spec.get(key) or []
    if isinstance(values, str):
        values = [values]
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise ValueError(f"brand {brand!r}: {key} must be a list of non-empty strings")
    return [fold(v.strip())[0] for v in values]


def _phrase(keyword: str) -> str:
    """A keyword on word boundaries, its inner spaces matching any run of whitespace."""
    body = r"\s+".join(re.escape(word) for word in keyword.split())
    return rf"(?<!{_SPACED_WORD}){body}(?!{_SPACED_WORD})"


def _tag(sign: str, value: str) -> str:
    """#tag or @handle, whole: not inside a word before it, nor continued after it (a hashtag by a letter of any
    script, as the platforms read one; a handle, Latin letters and digits only, by one of those)."""
    name = re.escape(value.lstrip(sign))
    after = r"\w" if sign == "#" else _SPACED_WORD
    return rf"(?<!{_SPACED_WORD})(?<!{re.escape(sign)}){re.escape(sign)}{name}(?!{after})"
