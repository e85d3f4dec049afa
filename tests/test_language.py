"""Every post's language: identified where the dump gives none, the dump's own tag kept (as ISO 639-1) where
it gives one; posts in a language the model does not cover are stored unscored, with the reason, fetched
and scored by nothing, and counted in no share or net sentiment of any report or dashboard table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import duckdb
import pytest

from mmsa import language, report, source
from mmsa.brands import BrandTagger
from mmsa.cli import main
from mmsa.dashboard.filters import Filters
from mmsa.dashboard.server import Dashboard
from mmsa.model import load_model

CLEAR = {
    "en": "I love the new phone, the battery lasts all day!",
    "fr": "Le service client était vraiment excellent aujourd'hui, merci beaucoup.",
    "de": "Der Kundendienst hat mir heute sehr schnell geholfen, vielen Dank.",
    "es": "El pedido llegó roto y nadie responde a mis correos.",
    "it": "Il nuovo telefono è bellissimo, sono molto contento.",
    "pt": "O atendimento foi péssimo, nunca mais compro nessa loja.",
    "ar": "الخدمة كانت ممتازة اليوم، شكرا جزيلا",
    "hi": "यह फ़ोन बहुत अच्छा है, मुझे बहुत पसंद आया।",
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def _langs(dump: Path) -> dict[str, str | None]:
    (shard,) = source.iter_shards(dump, 100)
    return dict(zip(shard.posts["post_id"].to_pylist(), shard.posts["lang"].to_pylist()))


def test_a_dump_without_lang_gets_each_posts_language(tmp_path):
    rows = [{"post_id": code, "created_at": "2026-11-20T10:00:00Z", "text": text} for code, text in CLEAR.items()]
    rows += [
        {"post_id": "one-word", "created_at": "2026-11-20T10:00:00Z", "text": "merci!"},  # a coin toss: no language
        {"post_id": "one-word-sure", "created_at": "2026-11-20T10:00:00Z", "text": "Glückwunsch!"},
        {"post_id": "hinglish", "created_at": "2026-11-20T10:00:00Z", "text": "yaar ye phone bahut accha hai, mujhe pasand aaya"},
        {"post_id": "hinglish-2", "created_at": "2026-11-20T10:00:00Z", "text": "sab theek ho jayega"},
        # English in the lower-cased, tokenised form of XLM-T's Hindi file, and English about India, stay English
        {"post_id": "en-tokenised", "created_at": "2026-11-20T10:00:00Z",
         "text": "i want to watch the new movie tonight , anyone coming ?"},
        {"post_id": "en-india", "created_at": "2026-11-20T10:00:00Z",
         "text": "India won the match by six wickets in Mumbai, what a game!"},
        # mentions, links and RT are no language: English around them stays English, and nothing else is none
        {"post_id": "en-noisy", "created_at": "2026-11-20T10:00:00Z",
         "text": "RT @AcmeSupport @bob: thanks for the quick fix https://t.co/abc123 #acme"},
        {"post_id": "no-letters", "created_at": "2026-11-20T10:00:00Z", "text": "@acme 😍😍 https://t.co/abc123",
         "image_url": "https://img.example/1.jpg"},
    ]
    langs = _langs(_write(tmp_path / "flat.jsonl", rows))
    assert langs == {**{code: code for code in CLEAR}, "hinglish": "hi", "hinglish-2": "hi", "en-noisy": "en",
                     "en-tokenised": "en", "en-india": "en", "no-letters": None, "one-word": None, "one-word-sure": "de"}


# Romanised Hindi without the function words the rules know: py3langid alone calls them jv, uz, en.
HINGLISH_BEYOND_THE_WORDS = ["bilkul sahi baat", "dil se shukriya dost", "sab theek ho jayega"]


def test_romanised_hindi_beyond_its_function_words_is_found_by_the_shipped_model():
    rules_only = language.Identifier(language.load().langid, {}, float("-inf"), 0.0)
    assert [rules_only.identify(t) for t in HINGLISH_BEYOND_THE_WORDS] == ["jv", "uz", "en"]
    assert [language.identify(t) for t in HINGLISH_BEYOND_THE_WORDS] == ["hi", "hi", "hi"]
    # what the identifier calls Indonesian, Turkish or Tagalog, languages of far more posts, it keeps
    assert language.identify("bilkul sahi baat boli") == "id"
    weights, _, logit = language.read_hindi_model()
    # small enough to ship in the package, and a real model: thousands of weights, a threshold above even odds
    assert language.HINDI_MODEL.stat().st_size < 3_000_000 and len(weights) > 1000 and logit > 0


def test_a_dumps_own_tag_is_kept_as_iso_639_1(tmp_path):
    french = CLEAR["fr"]
    rows = [
        {"post_id": "us", "created_at": "2026-11-20T10:00:00Z", "text": french, "lang": "en-US"},  # the dump's word wins
        {"post_id": "br", "created_at": "2026-11-20T10:00:00Z", "text": "bom dia", "lang": "pt_BR"},
        {"post_id": "x-old", "created_at": "2026-11-20T10:00:00Z", "text": "selamat pagi", "lang": "in"},
        {"post_id": "und", "created_at": "2026-11-20T10:00:00Z", "text": french, "lang": "und"},  # X: undetermined
        {"post_id": "qme", "created_at": "2026-11-20T10:00:00Z", "text": french, "lang": "qme"},  # X: media only
        {"post_id": "word", "created_at": "2026-11-20T10:00:00Z", "text": french, "lang": "French"},  # not a tag
        {"post_id": "xx", "created_at": "2026-11-20T10:00:00Z", "text": french, "lang": "xx"},  # no such language
    ]
    assert _langs(_write(tmp_path / "tagged.jsonl", rows)) == {
        "us": "en", "br": "pt", "x-old": "id", "und": "fr", "qme": "fr", "word": "fr", "xx": "fr"}
    assert language.normalise("zh-Hant-TW") == "zh" and language.normalise("haw") == "haw"
    # ISO 639-2/3 codes (a warehouse's `eng`, a Mastodon export's `cmn`) are the two-letter language where one exists
    assert {t: language.normalise(t) for t in ("eng", "spa", "jpn", "ger", "cmn", "arz", "tl", "fil", "x-klingon", "zzz")} == {
        "eng": "en", "spa": "es", "jpn": "ja", "ger": "de", "cmn": "zh", "arz": "ar", "tl": "tl", "fil": "tl",
        "x-klingon": None, "zzz": None}  # tl: the identifier's code for what the registry calls fil


def test_english_with_words_romanised_hindi_shares_and_indonesian_turkish_tagalog_are_not_hindi():
    """English words that are Hindi too (log, tab) do not make an English post Hindi, and a Hindi function word in
    Indonesian (ke), Turkish (ki) or Tagalog (ko) leaves the identifier's answer; Hinglish is still Hindi."""
    assert {text: language.identify(text) for text in (
        "Can't log in to acme, the app keeps crashing on the settings tab",
        "Aku pergi ke toko tadi sore, ramai sekali",
        "Saya suka sekali ponsel ini, baterainya tahan lama",
        "Öyle bir telefon ki bayıldım",
        "Ganda ng phone ko, sulit na sulit",
        "yaar ye phone bahut accha hai, mujhe pasand aaya",
    )} == {
        "Can't log in to acme, the app keeps crashing on the settings tab": "en",
        "Aku pergi ke toko tadi sore, ramai sekali": "id",
        "Saya suka sekali ponsel ini, baterainya tahan lama": "id",
        "Öyle bir telefon ki bayıldım": "tr",
        "Ganda ng phone ko, sulit na sulit": "tl",
        "yaar ye phone bahut accha hai, mujhe pasand aaya": "hi",
    }


def test_a_brand_name_is_no_evidence_of_a_language():
    """"acme" alone reads as Italian or Kinyarwanda beside a short English word: the brand names a post holds are
    left out when its language is identified, so "hello acme" is not stored unscored as Italian."""
    tagger = BrandTagger({"acme": {"keywords": ["acme"]}})
    assert language.identify("hello acme") not in (None, "en")  # what the names did
    lang = {text: source.validate({"post_id": "p", "created_at": 0, "text": text}, tagger=tagger)["lang"]
            for text in ("hello acme", "bye acme", "Danke acme, das war gut gemacht", "I love acme")}
    assert lang == {"hello acme": None, "bye acme": None, "Danke acme, das war gut gemacht": "de", "I love acme": "en"}
    assert source.validate({"post_id": "p", "created_at": 0, "text": "hello acme", "brand": "acme"})["lang"] is None


def test_the_shipped_model_covers_english_only():
    assert load_model("default").languages == {"en"}


# --- end to end: a real `mmsa score`, the real reports and dashboard over its DuckDB ----------------------

ENGLISH = [
    ("2026-11-20T09:00:00Z", "Absolutely love my new Acme headphones, best purchase this year!"),
    ("2026-11-20T10:00:00Z", "Acme support kept me on hold for two hours, terrible and rude."),
    ("2026-11-20T11:00:00Z", "Acme announced its quarterly results today."),
    ("2026-11-21T09:00:00Z", "So happy with the Acme update, everything feels faster. Thank you!"),
    ("2026-11-21T10:00:00Z", "Worst experience ever with Acme, my order arrived broken. Never again."),
]
UNCOVERED = [
    ("fr", "2026-11-20T12:00:00Z", "Le service client d'Acme était vraiment excellent aujourd'hui, merci beaucoup."),
    ("fr", "2026-11-21T12:00:00Z", "Acme a encore perdu ma commande, je suis vraiment déçu de ce service."),
    ("fr", "2026-11-21T13:00:00Z", "Le nouveau casque Acme est magnifique, je l'adore vraiment."),
    ("es", "2026-11-20T13:00:00Z", "El pedido de Acme llegó roto y nadie responde a mis correos."),
    ("es", "2026-11-21T14:00:00Z", "Me encanta el nuevo teléfono de Acme, es muy rápido y bonito."),
]
# Report columns that are volumes, not sentiment: an unscored post is still a mention.
VOLUMES = {"share_of_voice", "share_of_brand_posts", "posts", "mentions", "posts_z", "mean_posts", "engagement"}
KEYS = ("brand", "day", "week", "lang", "source", "ranking", "rank", "period_from", "image_status", "kind")


def _dump(path: Path, uncovered: bool) -> Path:
    rows = [{"post_id": f"en-{i}", "created_at": at, "text": text, "brand": "acme"} for i, (at, text) in enumerate(ENGLISH)]
    if uncovered:
        rows += [{"post_id": f"{lang}-{i}", "created_at": at, "text": text, "brand": "acme"}
                 for i, (lang, at, text) in enumerate(UNCOVERED)]
        # Nothing listens on port 9: an image that were fetched would show as connection_error.
        rows[-1]["image_url"] = "http://127.0.0.1:9/never-fetched.jpg"
    return _write(path, rows)


def _sentiment_columns(rows: list[dict]) -> dict[tuple, dict]:
    """Per row (by its key columns), the columns that are shares, net sentiment or a mean score."""
    out = {}
    for r in rows:
        key = tuple(r.get(k) for k in KEYS)
        out[key] = {c: v for c, v in r.items() if c not in VOLUMES
                    and any(w in c for w in ("share", "net_sentiment", "sentiment_score"))}
    return out


@pytest.fixture(scope="module")
def scored(prefect_harness, tmp_path_factory):
    """Two databases scored by `mmsa score` (and what it printed): English posts alone, and the same with
    French and Spanish ones."""
    tmp = tmp_path_factory.mktemp("langs")
    dbs = {}
    for name, uncovered in (("english", False), ("mixed", True)):
        dump = _dump(tmp / f"{name}.jsonl", uncovered)
        db = tmp / f"{name}.duckdb"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["score", str(dump), "--db", str(db), "--out", str(tmp / f"{name}-out"),
                         "--allow-hosts", "127.0.0.1"]) == 0
        dbs[name] = db
        dbs[f"{name} printed"] = printed.getvalue()
    return dbs


def test_an_uncovered_language_is_stored_unscored_with_its_reason(scored):
    with duckdb.connect(str(scored["mixed"]), read_only=True) as con:
        posts = {r[0]: r[1:] for r in con.sql(
            "SELECT post_id, lang, unscored_reason, label, p_positive, p_neutral, p_negative, sentiment_score, text_label,"
            " text_p_positive, image_label, image_p_negative, image_status, len(images) FROM scored_posts").fetchall()}
        brand_rows = con.execute("SELECT count(*), count(label), count(brand_label), count(brand_p_positive) + "
                                 "count(brand_p_neutral) + count(brand_p_negative) FROM post_sentiment "
                                 "WHERE brand = 'acme'").fetchone()
        not_covered, run_images = con.execute("SELECT not_covered, image_status FROM runs").fetchone()
    assert len(posts) == 10 and brand_rows == (10, 5, 5, 15)  # the brand-level prediction too: English only
    for post_id, (lang, reason, *predictions, image_status, n_images) in posts.items():
        if post_id.startswith("en-"):
            assert lang == "en" and reason is None and predictions[0] in ("positive", "neutral", "negative")
        else:
            assert lang == post_id.split("-")[0] and reason == "unsupported_language"
            assert predictions == [None] * 9 and image_status is None and n_images == 0
    assert json.loads(not_covered) == {"fr": 3, "es": 2}
    assert json.loads(run_images) == {"no_image": 5}  # the Spanish post's image was never fetched


def test_the_run_summary_counts_the_posts_not_covered_per_language(scored):
    assert "5 posts in 2 languages not covered (stored unscored): fr 3, es 2" in scored["mixed printed"]
    assert "rows in, 5 scored + 5 stored unscored, 0 rejected" in scored["mixed printed"]
    assert "Every post is in a language the model covers." in scored["english printed"]


def test_no_report_counts_an_unscored_post_in_a_share_or_net_sentiment(scored):
    """Every report of the pack gives the same shares, net sentiment and mean scores with the uncovered
    posts as without them; the volumes count them."""
    for name, _ in report.list_reports():
        alone = _sentiment_columns(report.run_report(name, scored["english"]).to_pylist())
        mixed = _sentiment_columns(report.run_report(name, scored["mixed"]).to_pylist())
        for key, columns in alone.items():
            assert mixed.get(key) == pytest.approx(columns), (name, key)
    daily = report.run_report("daily_brand_sentiment", scored["mixed"]).to_pylist()
    assert [(r["posts"], r["labelled"]) for r in daily] == [(5, 3), (5, 2)]
    assert all(r["positive_share"] + r["neutral_share"] + r["negative_share"] == pytest.approx(1) for r in daily)
    by_lang = {r["lang"]: r for r in report.run_report("breakdown_by_language", scored["mixed"]).to_pylist()}
    assert (by_lang["fr"]["posts"], by_lang["fr"]["labelled"], by_lang["fr"]["net_sentiment"]) == (3, 0, None)
    top = report.run_report("top_posts", scored["mixed"]).to_pylist()
    assert {r["post_id"][:2] for r in top if r["ranking"] != "engagement"} == {"en"}
    unscored = report.run_report("unscored_posts", scored["mixed"]).to_pylist()
    assert [(r["lang"], r["posts"], r["unscored_reason"]) for r in unscored] == [
        ("fr", 3, "unsupported_language"), ("es", 2, "unsupported_language")]


def test_the_dashboard_leaves_them_out_of_shares_and_lists_them_on_data_quality(scored):
    snapshots = {name: Dashboard(scored[name].with_name(f"{name}.analyst.duckdb")) for name in ("english", "mixed")}
    brands = {}
    for name, dash in snapshots.items():
        with dash.snapshot.cursor() as con:
            (brands[name],) = dash.table_brands(con, Filters.parse({})).rows
    assert (brands["mixed"]["posts"], brands["mixed"]["labelled"]) == (10, 5)
    for column in ("negative_share", "negative_share_low", "negative_share_high", "net_sentiment"):
        assert brands["mixed"][column] == pytest.approx(brands["english"][column])
    page = snapshots["mixed"].handle("/quality", {})
    assert page.status == 200
    html = page.body.decode()
    assert "Posts not scored, per language" in html and "unsupported_language" in html
    assert ">fr<" in html and ">es<" in html
    overview = snapshots["mixed"].handle("/", {"lang": ["fr"]}).body.decode()  # posts, none of them labelled
    assert "no estimate" in overview and 'class="chart estimates"' not in overview
    assert 'class="chart estimates"' in snapshots["mixed"].handle("/", {}).body.decode()

