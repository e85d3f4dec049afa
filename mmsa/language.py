"""The language of a post, as an ISO 639-1 code: the dump's own tag where it has one, else identified
from the text (py3langid, whose model ships inside its wheel as numpy arrays; nothing is downloaded).

Choices measured on XLM-T's tweets (benchmarks/results/language.md): mentions, links and `RT` are
removed before identifying, as they read as no language or as English; dialect codes fold into their
ISO 639-1 macrolanguage (Egyptian Arabic `arz` is `ar`); regional varieties and pidgins that in short
posts mostly claim their neighbour's text (Galician for Portuguese, Nigerian Pidgin for English) are not
offered; a prior of where posts are written decides what a short text alone cannot; and Hindi written
in Latin letters, which the identifier never learnt, is told by its function words and by a small model
trained on XLM-T's and SemEval's tweets (benchmarks/train_language.py writes it: `language_hindi.npz`).
A text with no letters left (emoji, links, mentions only) has no language: None; so has a single word in
Latin letters ("ok", "wow", "merci": the script of dozens of languages) unless the identifier is sure of it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import threading
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import langcodes

# A dump's tag that says nothing: X's undetermined / no-linguistic-content codes and its private q-codes
# (qme: media only, qht: hashtags only, ...). The text is identified instead.
_UNTAGGED = re.compile(r"^(und|zxx|mul|mis|q[a-t][a-z])$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
# Identifier labels without an ISO 639-1 code whose macrolanguage has one; Filipino (the registry's name for a
# `tl` tag) is the identifier's Tagalog.
_MACRO = {"arz": "ar", "ary": "ar", "wuu": "zh", "yue": "zh", "uzs": "uz", "gug": "gn", "fil": "tl"}
# Labels not offered: each, on XLM-T's training tweets, claimed posts of a major neighbour (gl: 25
# Portuguese, pcm: 12 English, lb: 21 German ...) far more often than a post of its own is likely in a
# brand stream; zxx ("no linguistic content") would hide a language the text does have.
_NOT_OFFERED = frozenset({
    "pcm", "lb", "gl", "an", "ext", "oc", "lij", "vec", "wa", "la", "eo", "ltg", "fuv", "bcl", "ln", "st", "sn",
    "xh", "vo", "gcf", "gcr", "zxx",
})
# The prior: rough shares (%) of public posts by language on the large platforms; any other language gets
# _RARE. Its log, added to the identifier's class prior (a naive Bayes model: the prior of its training
# corpus, then, times where posts are written), decides the short posts the text alone cannot: English fragments of SemEval tweets cut to 2, 3, 4 words
# are identified as English 88%, 94%, 97% of the time with it, 58%, 79%, 89% without; XLM-T's tweets as
# before (each language within 1.6 points; Portuguese +2).
_SHARE = {"en": 34, "ja": 15, "es": 11, "pt": 6, "ar": 6, "id": 4, "ko": 3, "fr": 3, "tr": 3, "th": 3, "ru": 2,
          "tl": 1, "it": 1, "de": 1, "hi": 1, "fa": 1, "pl": 0.5, "nl": 0.5, "zh": 0.5, "ms": 0.5, "ur": 0.5}
_RARE = 0.05
# Links in any form (a cut `http…`, a corpus's `http/URL` placeholder) are no language either.
_NOISE = re.compile(r"https?://\S+|www\.\S+|\bhttp\S*|@\w+|\bRT\b|&(?:amp|lt|gt);")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"[a-z]+")
_ANY_WORD = re.compile(r"[^\W\d_]{2,}")  # a word, in any script: two letters or more
_NOT_LATIN = re.compile(r"[^\W\d_\u0000-\u024f]")  # a letter outside the Latin blocks
# Romanised Hindi's commonest function words and verbs, less those that are common words of English,
# French, German, Italian, Portuguese or Spanish too (mein is German, se Spanish, log and tab English; hai,
# Italian too, stays: one word alone flags no post the identifier calls one of those): on XLM-T's training
# tweets two of these in a post flag 47% of the Hindi ones and 0.1% of the others.
_HINDI_WORDS = frozenset("""
hai hain hoga hogi hote hota hoti tha thi thay ka ki ke ko mujhe mera meri mere tera teri tere apna apni apne
nahi nahin nhi kya kyu kyun kyon kaise kaisa kahan kaha kab abhi bhi bhai yaar yar aur toh yeh vo
woh kuch koi sabse bahut bohot kar karo karna karne karte kiya kiye diya liya gaya gayi gya gye raha rahe
rahi rha rhe hua hue agar lekin phir sirf sath saath liye wala wale wali aisa aise itna uske uska unka
iska isko usko tum aap ji accha acha achha dekh dekho dekhna pata chal chalo chahiye sakta sakte
sakti tujhe tumhe hamara tumhara kal aaj
""".split())
# The Latin-script languages of at least 1% of posts (_SHARE): the identifier calling a post one of these keeps
# its answer when the post holds a Hindi word (Indonesian's ke, Tagalog's ko, Turkish's ki), unless two or more
# such words make a tenth of it, and the romanised-Hindi model does not overrule it. Hinglish the identifier
# calls Tagalog, Indonesian or Turkish is missed (XLM-T's Hindi: 3% of its tweets), each far rarer in a stream.
_LATIN_MAJOR = frozenset({"en", "fr", "de", "it", "pt", "es", "id", "tr", "tl"})
# A single Latin word gets the identifier's answer when its posterior (with the prior) is at least this: on
# XLM-T's training tweets it names 31 of 53 one-word German ones (24 right, 5 English), 12 of 18 Italian
# (10 right), and of 53 one-word MVSA posts 26, all English; a guess at every one was 44% right on German.
_ONE_WORD_SURE = 0.9
# The romanised-Hindi model: weights of a logistic regression over hindi_features, its intercept and the
# logit above which a post is Hindi (benchmarks/train_language.py; chosen there by CV on XLM-T train).
HINDI_MODEL = Path(__file__).resolve().parent / "language_hindi.npz"
_NOT_LETTERS = re.compile(r"[\W\d_]+")


class Identifier:
    """py3langid with the rules above, and the romanised-Hindi model over the posts it reads as English or
    as a minor language in Latin letters (where Hinglish lands)."""

    def __init__(self, langid, hindi_weights: dict[str, float], hindi_bias: float, hindi_logit: float):
        self.langid = langid
        self.hindi_weights = hindi_weights
        self.hindi_bias = hindi_bias
        self.hindi_logit = hindi_logit
        # A post's logit is a sum over its distinct words, and words repeat across posts: each word's share is
        # worked out once (a post then costs a few µs, not the 300 of walking its n-grams).
        self._word_score = functools.lru_cache(maxsize=1 << 17)(self._score_word)

    def _score_word(self, word: str) -> float:
        get = self.hindi_weights.get
        return sum(get(f, 0.0) for f in _word_features(word))

    def hindi_score(self, cleaned: str) -> float:
        """The model's logit that a cleaned text (clean()) is romanised Hindi."""
        return self.hindi_bias + sum(map(self._word_score, _words(cleaned)))

    def identify(self, text: str | None) -> str | None:
        cleaned = clean(text)
        if not cleaned or not _LETTER.search(cleaned):
            return None
        latin = not _NOT_LATIN.search(cleaned)
        if latin and len(_ANY_WORD.findall(cleaned)) < 2:
            (lang, top), *rest = self.langid.rank(cleaned)
            # the posterior of the best label: rank() gives log scores (norm_probs off)
            if 1.0 / (1.0 + sum(math.exp(score - top) for _, score in rest)) < _ONE_WORD_SURE:
                return None
        else:
            lang, _ = self.langid.classify(cleaned)
        lang = _MACRO.get(lang, lang)
        words = _WORD.findall(cleaned.lower())
        hindi = sum(w in _HINDI_WORDS for w in words)
        if (hindi >= 2 and hindi >= 0.1 * len(words)) or (hindi and lang not in _LATIN_MAJOR):
            return "hi"
        if latin and lang not in _LATIN_MAJOR - {"en"} and self.hindi_score(cleaned) > self.hindi_logit:
            return "hi"
        return lang


def clean(text: str | None) -> str:
    """A post's text without what is no language: mentions, links, `RT`, HTML entities, the `#` of a tag."""
    return _NOISE.sub(" ", text).replace("#", " ") if text else ""


def _words(cleaned: str) -> list[str]:
    """A cleaned text's distinct words, lower-cased: case, digits, punctuation and spacing are left out, as
    XLM-T's Hindi file holds English tweets in another corpus's lower-cased, space-tokenised form, and a model
    that saw the form would learn it as Hindi."""
    return list(dict.fromkeys(_NOT_LETTERS.sub(" ", cleaned.lower()).split()))


def _word_features(word: str) -> list[str]:
    edged = f" {word} "
    return ["w:" + word] + [edged[i:i + n] for n in (2, 3, 4) for i in range(len(edged) - n + 1)]


def hindi_features(cleaned: str) -> list[str]:
    """The romanised-Hindi model's features, counted: each distinct word (`w:` and itself) and its character
    2-4-grams with word edges."""
    return [f for w in _words(cleaned) for f in _word_features(w)]


def langid():
    """py3langid's identifier with the prior and without the labels not offered (0.5 s: its model is
    LZMA-compressed)."""
    import numpy as np
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    from py3langid.modelio import load_model

    ptc, pc, classes, nextmove, row, output = load_model(MODEL_DIR / MODEL_FILE)
    prior = np.log([_SHARE.get(lang, _RARE) for lang in classes]).astype(pc.dtype)
    ident = LanguageIdentifier(ptc, pc + prior, classes, nextmove, output, tk_row=row)
    ident.set_languages([lang for lang in ident.labels if lang not in _NOT_OFFERED])
    return ident


def read_hindi_model(path: Path = HINDI_MODEL) -> tuple[dict[str, float], float, float]:
    """(weights by feature, intercept, decision logit) from the file benchmarks/train_language.py writes."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        features = z["features"].tobytes().decode("utf-8").split("\n")
        return dict(zip(features, z["weights"].astype(float).tolist())), float(z["bias"]), float(z["logit"])


_identifier: Identifier | None = None
_lock = threading.Lock()


def load() -> Identifier:
    """The identifier, loaded once per process; `mmsa score` loads it while Prefect starts."""
    global _identifier
    with _lock:
        if _identifier is None:
            _identifier = Identifier(langid(), *read_hindi_model())
        return _identifier


def normalise(tag: str | None) -> str | None:
    """A dump's language tag as ISO 639-1 (`en-US` -> `en`, `eng` -> `en`, `in` -> `id`, `cmn` -> `zh`: langcodes
    knows the registry); None when it says nothing or is no registered language (`xx`), so the text is identified
    instead. A language without a two-letter code keeps its three letters (`haw`)."""
    if not isinstance(tag, str) or not tag.strip():
        return None
    try:
        standard = langcodes.standardize_tag(tag.strip(), macro=True)
    except (ValueError, LookupError):  # langcodes.tag_parser.LanguageTagError is a ValueError
        return None
    code = langcodes.Language.get(standard).language if langcodes.tag_is_valid(standard) else None
    if not code or not _LANGUAGE.match(code) or _UNTAGGED.match(code):  # x-klingon: private use, no language
        return None
    return _MACRO.get(code, code)


def identify(text: str | None) -> str | None:
    """The language of a post's text, or None when it has too little to go on."""
    return load().identify(text)


def post_language(tag: str | list | None, text: Callable[[], str | None]) -> str | None:
    """What `lang` a post is stored with: its dump's tag, normalised, else the language of its text (`text()`,
    asked for only then). Of several tags (Bluesky's `langs`, often the poster's settings rather than the post's),
    the text's language when it is one of them, else the first."""
    tags = [t for t in map(normalise, tag if isinstance(tag, list) else [tag]) if t]
    if len(tags) == 1:
        return tags[0]
    found = identify(text())
    return found if not tags or found in tags else tags[0]


# Changes with the identifier's version and with the rules above: a dump's shards (which hold `lang`) are
# cut again when either changes (mmsa.source.content_key).
KEY = hashlib.sha256(repr((version("py3langid"), version("langcodes"), sorted(_NOT_OFFERED), sorted(_MACRO.items()),
                           sorted(_HINDI_WORDS), sorted(_LATIN_MAJOR), _UNTAGGED.pattern,
                           sorted(_SHARE.items()), _RARE, _NOISE.pattern, _ONE_WORD_SURE,
                           hashlib.sha256(HINDI_MODEL.read_bytes()).hexdigest())).encode()).hexdigest()[:12]
