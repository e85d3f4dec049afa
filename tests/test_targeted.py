"""Sentiment toward each brand a post names: the target spans, the target head, the engine's per-target
probabilities and `mmsa score --brands` end to end on the shipped model."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, MPNetConfig, MPNetModel
from transformers.models.bert.modeling_bert import BertLayer

from imageserver import encode, image_server, textured_image  # noqa: F401  (fixture)
from mmsa import pipeline, source
from mmsa.brands import BrandTagger, find_spans
from mmsa.cli import main
from mmsa.encoders import fast_tokenizer, span_token_mask, spell_emoji, target_window, token_ids, unpadded
from mmsa.heads import TargetHead
from mmsa.faults import PermanentError
from mmsa.infer import Engine, get_engine
from mmsa.model import Prediction, SentimentModel, blend_targets, load_model, resolve_model_dir
from mmsa.recipe import borrow_target_head
from mmsa.data import target_spans
from mmsa.schema import LABELS
from mmsa.targeted import TargetedSet, fit_target_head, group_folds, predict_targets

PRAISE_AND_PAN = "acme's new phone is brilliant, I love it. globex support is a disgrace, never buying from them again"
CONTRAST = "acme is amazing, globex is terrible"  # the head tells these apart; PRAISE_AND_PAN it does not yet


def test_brand_spans_come_from_the_rules_and_else_from_the_brand_name():
    tagger = BrandTagger({"acme": {"keywords": ["acme"], "handles": ["@acmecorp"]}})
    text = "@AcmeCorp your ACME kettle died; globex's works"
    assert [text[a:b] for a, b in tagger.spans(text, "acme")] == ["@AcmeCorp", "ACME"]
    assert [text[a:b] for a, b in tagger.spans(text, "globex")] == ["globex"]  # no rule: its name
    assert tagger.spans(text, "initech") == [] and find_spans(None, "acme") == []


def test_a_labelled_row_uses_its_target_start_when_the_target_repeats():
    row = {"text": "apple pie beats apple phones", "target": "apple", "target_start": 16}
    assert target_spans(row) == [(16, 21)]
    assert target_spans({**row, "target_start": None}) == [(0, 5), (16, 21)]


def test_span_token_mask_marks_the_brand_tokens_only():
    tok = fast_tokenizer(load_model("default").text_encoder.tokenizer)
    unpadded(tok, 64)
    text = "I love acme but hate globex"
    (mask,) = span_token_mask(tok, [text], [find_spans(text, "globex")])
    enc = tok.encode(text)
    assert [t for t, m in zip(enc.tokens, mask) if m] == [t for t, (a, b) in zip(enc.tokens, enc.offsets)
                                                          if a >= text.index("globex") and b > a]
    assert not mask[0] and not mask[-1]  # [CLS] / [SEP] never


def test_emoji_are_read_as_their_names_and_a_brand_span_still_marks_the_brand():
    """Neither encoder's vocabulary has emoji (each read as [UNK]): they are spelled out before tokenizing, and a
    brand's character span, given on the text as posted, still marks the brand's tokens and nothing else."""
    tok = fast_tokenizer(load_model("default").text_encoder.tokenizer)
    unpadded(tok, 64)
    text = "😡😡 acme, 😍 globex 👍🏽"
    assert spell_emoji(text)[0].split() == ["enraged", "face", "enraged", "face", "acme,", "smiling", "face", "with",
                                            "heart-eyes", "globex", "thumbs", "up"]
    assert spell_emoji("no emoji here") == ("no emoji here", None)
    (ids,) = token_ids(tok, [text])
    assert tok.token_to_id("[UNK]") not in ids
    assert token_ids(tok, ["😡"]) != token_ids(tok, ["😍"])
    for brand in ("acme", "globex"):
        (mask,) = span_token_mask(tok, [text], [find_spans(text, brand)])
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == brand


def test_the_shipped_model_reads_emoji_alone():
    """Posts of emoji only: the model's labels follow the emoji (before they were spelled out, every emoji-only
    post got one and the same guess)."""
    engine = Engine(load_model("default"), backend="torch")
    labels = engine.predict(["😡😡😡", "😍😍😍", "💩"], [None] * 3).text_probs.argmax(1)
    assert [LABELS[i] for i in labels] == ["negative", "positive", "negative"]


def test_target_head_copies_bert_blocks_exactly():
    """Before training (marker zero) the head's blocks reproduce the encoder's top blocks: the head starts
    from exactly the states the post-level path reads."""
    cfg = BertConfig(hidden_size=48, num_attention_heads=4, intermediate_size=192, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    layers = [BertLayer(cfg).eval() for _ in range(2)]
    head = TargetHead(48, blocks=2, n_heads=4).from_layers(layers).eval()
    x = torch.randn(3, 9, 48)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        want = x
        for layer in layers:
            want = layer(want, attention_mask=(~mask[:, None, None, :]).float() * -1e9)
            want = want[0] if isinstance(want, tuple) else want
        got = head.states(x, mask, mask)
    assert torch.allclose(got[mask], want[mask], atol=1e-5)
    with pytest.raises(ValueError, match="2 blocks"):
        head.from_layers(layers[:1])


def test_target_head_copies_mpnet_blocks_with_their_relative_position_bias():
    """The large tier's encoder: MPNet's top blocks, rerun by the head over the states below them, give MPNet's
    own final states (its relative position bias included); without the bias they would not."""
    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=100, hidden_size=48, num_attention_heads=4, intermediate_size=192,
                      num_hidden_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    mpnet = MPNetModel(cfg).eval()
    nn.init.normal_(mpnet.encoder.relative_attention_bias.weight)  # as large as a trained model's, not init's 0.02
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 7:] = False
    with torch.no_grad():
        hidden = mpnet(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states
        encoder = mpnet.encoder
        head = TargetHead(48, blocks=2, n_heads=4, position_buckets=cfg.relative_attention_num_buckets)
        got = head.from_layers(encoder.layer[1:], encoder.relative_attention_bias).eval().states(hidden[1], mask, mask)
        assert torch.allclose(got[mask], hidden[3][mask], atol=1e-4)
        plain = TargetHead(48, blocks=2, n_heads=4).from_layers(encoder.layer[1:]).eval().states(hidden[1], mask, mask)
        assert not torch.allclose(plain[mask], hidden[3][mask], atol=1e-2)
    with pytest.raises(ValueError, match="relative position bias"):
        TargetHead(48, blocks=2, n_heads=4).from_layers(encoder.layer[1:], encoder.relative_attention_bias)


def _toy_set(n: int, rng: np.random.Generator) -> TargetedSet:
    """Texts of 6 random token states; each row's label is carried by its target token's state alone (the
    post's mean says nothing), two targets per text with different labels."""
    d, width = 16, 6
    signs = np.eye(3, d) * 3
    states, text, spans, labels = [], [], [], []
    for t in range(n):
        h = rng.normal(size=(width, d))
        picks = rng.choice(width, 2, replace=False)
        for pos, lab in zip(picks, rng.choice(3, 2, replace=False)):
            h[pos] += signs[lab]
            m = np.zeros(width, bool)
            m[pos] = True
            text.append(t), spans.append(m), labels.append(lab)
        states.append(h)
    return TargetedSet(np.concatenate(states).astype(np.float16), np.arange(n + 1) * width, np.array(text), spans,
                       np.array(labels), np.array(["toy"] * len(labels)))


def test_the_target_head_learns_sentiment_carried_by_the_target_tokens():
    rng = np.random.default_rng(0)
    ds = _toy_set(150, rng)
    fold = group_folds(ds, 5, seed=0)
    assert all(len(set(fold[ds.text == t])) == 1 for t in range(150))  # a text's targets share its fold
    tr, te = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
    head = fit_target_head(ds, tr, epochs=15, lr=3e-3, seed=0, progress=False)
    acc = (predict_targets(head, ds, te).argmax(1) == ds.label[te]).mean()
    assert acc > 0.9  # chance is 1/3, and the post alone cannot tell its two targets apart


def test_engine_gives_probabilities_toward_each_target_and_none_without_targets():
    engine = get_engine("default", "torch")
    texts = [PRAISE_AND_PAN, "nothing to see here"]
    spans = [[find_spans(PRAISE_AND_PAN, "acme"), find_spans(PRAISE_AND_PAN, "globex")], []]
    pred = engine.predict(texts, [None, None], targets=spans)
    assert [p.shape for p in pred.target_probs] == [(2, 3), (0, 3)]
    assert np.allclose(pred.target_probs[0].sum(1), 1)
    assert not np.allclose(pred.target_probs[0][0], pred.target_probs[0][1], atol=1e-3)  # each target its own
    assert not np.allclose(pred.target_probs[0][0], pred.text_probs[0], atol=1e-3)  # not the post's copied
    assert engine.predict(texts, [None, None]).target_probs is None
    # batch size 1 splits rows across batches: every row keeps its own targets
    one = engine.predict(texts, [None, None], batch_size=1, targets=spans)
    assert np.allclose(one.target_probs[0], pred.target_probs[0], atol=1e-5)
    onnx = get_engine("default", "onnx").predict(texts, [None, None], targets=spans)  # the exported graph's tap
    assert np.allclose(onnx.target_probs[0], pred.target_probs[0], atol=1e-3)


FILLER = ("I spent the weekend sorting old boxes of cables, books and tools in the garage, then drove to the coast with "
          "my cousins, and we talked about football, the weather and the new bakery downtown for hours. ") * 2


def test_a_brand_past_the_encoders_window_is_scored_over_a_window_around_it():
    """A long post naming its brand only after the 64 tokens the encoder reads: scored toward the brand over a
    window of the text that starts a few words before it, not toward the whole text with no token marked (which
    gave praise and pan of the brand the same probabilities)."""
    engine = get_engine("default", "torch")
    texts = [FILLER + "In the end acme support was rude and my acme phone broke again, awful.",
             FILLER + "In the end acme support was wonderful and my acme phone is perfect, love it.", PRAISE_AND_PAN]
    spans = [[find_spans(t, "acme")] for t in texts]
    start = target_window(engine.tokenizer, texts[0], spans[0][0])
    assert 0 < start < texts[0].index("acme") and texts[0][start - 1] == " "  # a word's start, before the brand
    assert target_window(engine.tokenizer, PRAISE_AND_PAN, spans[2][0]) is None  # read as it is
    pred = engine.predict(texts, [None] * 3, targets=spans)
    assert [LABELS[int(p[0].argmax())] for p in pred.target_probs[:2]] == ["negative", "positive"]
    window = texts[0][start:]
    alone = engine.predict([window], [None], targets=[[find_spans(window, "acme")]])
    np.testing.assert_allclose(pred.target_probs[0], alone.target_probs[0], atol=1e-5)
    whole = engine.predict(texts[2:], [None], targets=spans[2:])  # a target the window reads: untouched
    np.testing.assert_allclose(pred.target_probs[2], whole.target_probs[0], atol=1e-5)
    # a span no token can mark (a zero-width space; an empty span at the end): no window, the whole text as before
    odd = [FILLER + "\u200b", "hello"]
    assert [p.shape for p in engine.predict(odd, [None] * 2, targets=[[[(len(odd[0]) - 1, len(odd[0]))]], [[(5, 5)]]]).target_probs] \
        == [(1, 3), (1, 3)]


def _borrower(folder):
    """A copy of the shipped model's folder without its target head."""
    shutil.copytree(resolve_model_dir("default"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    for k in ("target_head", "target_blocks"):
        cfg.pop(k)
    (folder / "target_head.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_a_model_without_a_target_head_borrows_the_one_its_config_names(tmp_path):
    """The large tier's way (config.json `target_model`): brands are scored by the lender's head over the lender's
    own encoder states, whatever the borrower's own reading of the post; rows without targets get none, and the
    borrower's version names the lender."""
    lender = load_model("default")
    plain = SentimentModel(_borrower(tmp_path / "plain"))
    folder = _borrower(tmp_path / "borrower")
    heads = load_file(str(folder / "heads.safetensors"))  # its own text path: reads posts unlike the lender's
    torch.manual_seed(0)
    save_file({k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v for k, v in heads.items()},
              str(folder / "heads.safetensors"))
    borrow_target_head(folder, str(lender.folder))  # as `mmsa train --targeted borrow:...`
    borrower = load_model(folder)  # loads its lender through the same cache
    with pytest.raises(ValueError, match="no target head to lend"):
        borrow_target_head(tmp_path / "borrower", str(plain.folder))
    assert borrower.target_model is lender and plain.target_model is None and lender.target_model is lender
    shutil.copytree(folder, tmp_path / "unborrowed")
    cfg = json.loads((folder / "config.json").read_text())
    (tmp_path / "unborrowed" / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "target_model"}))
    assert borrower.version != SentimentModel(tmp_path / "unborrowed").version  # its rows name the head they used

    texts = [PRAISE_AND_PAN, "nothing to see here", CONTRAST]
    spans = [[find_spans(PRAISE_AND_PAN, "acme"), find_spans(PRAISE_AND_PAN, "globex")], [],
             [find_spans(CONTRAST, "globex")]]
    pred = Engine(borrower, backend="torch", threads=1).predict(texts, [None] * 3, targets=spans)
    own = get_engine("default", "torch").predict(texts, [None] * 3, targets=spans)
    assert [p.shape for p in pred.target_probs] == [(2, 3), (0, 3), (1, 3)]
    assert not np.allclose(pred.text_probs, own.text_probs, atol=1e-2)
    for i in (0, 2):
        np.testing.assert_allclose(pred.target_probs[i], own.target_probs[i], atol=1e-5)
    assert Engine(plain, backend="torch", threads=1).predict(texts, [None] * 3, targets=spans).target_probs is None

    # With a head of its own (as the large tier's, rerunning its encoder's last block), its probabilities blend with
    # the lent ones, and its states come from its own encoder's tap, in either backend.
    torch.manual_seed(1)
    own_head = TargetHead(load_file(str(folder / "heads.safetensors"))["general.weight"].shape[1], 1)
    nn.init.normal_(own_head.out.weight, std=0.5)
    own_head.eval()
    shutil.copytree(folder, tmp_path / "both")
    borrow_target_head(tmp_path / "both", str(lender.folder), {"target_blend": 0.5}, own_head)
    both = SentimentModel(tmp_path / "both")
    assert both.target_model is lender and both.target_head is not None and both.version != borrower.version
    mixed = Engine(both, backend="torch", threads=1).predict(texts, [None] * 3, targets=spans)
    alone, _ = Engine(both, backend="torch", threads=1)._predict(texts, [None] * 3, None, 0.0, spans)  # its own head only
    for i in (0, 2):
        want = blend_targets(pred.target_probs[i], alone.target_probs[i], 0.5)
        np.testing.assert_allclose(mixed.target_probs[i], want, atol=1e-5)
        assert not np.allclose(mixed.target_probs[i], pred.target_probs[i], atol=1e-3)
    assert mixed.target_probs[1].shape == (0, 3)
    exported = Engine(both, backend="onnx", threads=1, cache_dir=tmp_path / "onnx").predict(texts, [None] * 3, targets=spans)
    for i in (0, 2):
        np.testing.assert_allclose(exported.target_probs[i], mixed.target_probs[i], atol=1e-3)
    with pytest.raises(PermanentError, match="no target head of its own"):  # borrowing from a borrower
        shutil.copytree(folder, tmp_path / "second")
        cfg = json.loads((folder / "config.json").read_text())
        (tmp_path / "second" / "config.json").write_text(json.dumps({**cfg, "target_model": str(folder)}))
        SentimentModel(tmp_path / "second")


def test_a_targets_only_engine_stops_at_the_states_its_target_head_reads(tmp_path):
    """What a borrower runs of its lender: the lender's first blocks only (2 of MiniLM's 6 for a 4-block head) and
    no image graph, with the same probabilities toward each target as the whole engine's, in either backend."""
    model = load_model("default")
    texts = [PRAISE_AND_PAN, CONTRAST]
    spans = [[find_spans(PRAISE_AND_PAN, "acme"), find_spans(PRAISE_AND_PAN, "globex")], [find_spans(CONTRAST, "globex")]]
    whole = get_engine("default", "torch").predict(texts, [None] * 2, targets=spans).target_probs
    short = Engine(model, backend="torch", threads=1, targets_only=True)
    blocks = len(model.text_encoder.layers()) - len(model.target_head.blocks)
    assert blocks == 2 and len(short.text_core.encoder.layers()) == blocks
    exported = Engine(model, backend="onnx", threads=1, cache_dir=tmp_path, targets_only=True)
    quantized = Engine(model, backend="onnx-int8", threads=1, cache_dir=tmp_path, targets_only=True)
    for engine, atol in ((short, 1e-5), (exported, 1e-3), (quantized, 0.05)):
        got = engine.predict(texts, [None] * 2, targets=spans).target_probs
        for g, w in zip(got, whole):
            np.testing.assert_allclose(g, w, atol=atol)
            assert (g.argmax(1) == w.argmax(1)).all()
    (folder,) = (tmp_path / "onnx").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["text-tap-int8.onnx", "text-tap.onnx", "tokenizer.json"]
    with pytest.raises(ValueError, match="needs a model with a target head"):
        Engine(SentimentModel(_borrower(tmp_path / "plain")), backend="torch", targets_only=True)


def test_toward_brands_reads_a_named_brand_from_the_text_and_leaves_an_unnamed_one_with_the_post():
    """A brand the text names gets the target head's probabilities, image or not. They were moved by the post's
    fused / text ratio: the general text head is sharper than the fused one, so "Absolutely love Globex, best
    purchase this year!" with a picture (fused 0.94 positive, text 0.9993) came out negative toward Globex."""
    text = np.array([[0.2, 0.6, 0.2], [0.9993, 0.0007, 1e-7]])
    fused = np.array([[0.2, 0.6, 0.2], [0.939, 0.045, 0.016]])  # post 0 has no usable image: fused == text
    pred = Prediction(fused, text, np.full((2, 3), np.nan))
    rows = [(0, 0, None), (1, 0, "u1"), (1, 1, "u2")]
    target = [np.array([[0.1, 0.1, 0.8]]), np.array([[0.991, 0.008, 0.001]]), np.zeros((0, 3))]
    spans = [[[(0, 4)], []], [[(3, 8)]]]
    out = pipeline.toward_brands(pred, rows, target, spans)
    assert np.allclose(out[0][0], [0.1, 0.1, 0.8]) and np.allclose(out[0][1], fused[0])
    assert np.allclose(out[1][0], [0.991, 0.008, 0.001])
    assert pipeline.toward_brands(pred, rows, None, spans) is None


def test_mmsa_score_gives_each_named_brand_the_target_heads_probabilities(prefect_harness, tmp_path):
    dump = tmp_path / "posts.jsonl"
    posts = [{"post_id": "both", "created_at": "2026-11-20T10:00:00Z", "text": PRAISE_AND_PAN},
             {"post_id": "neither", "created_at": "2026-11-20T11:00:00Z", "text": "acme and globex both open at nine"}]
    posts.append({"post_id": "field", "created_at": "2026-11-20T12:00:00Z", "text": "great day", "brand": "initech"})
    posts.append({"post_id": "contrast", "created_at": "2026-11-20T13:00:00Z", "text": CONTRAST})
    dump.write_text("".join(json.dumps(p) + "\n" for p in posts))
    brands = tmp_path / "brands.yaml"
    brands.write_text("acme:\n  keywords: [acme]\nglobex:\n  keywords: [globex]\n")
    db = tmp_path / "m.duckdb"
    assert main(["score", str(dump), "--db", str(db), "--out", str(tmp_path / "out"), "--brands", str(brands)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        got = {(r[0], r[1]): r[2:] for r in con.sql(
            "SELECT post_id, brand, brand_p_positive, brand_p_negative, p_positive, p_negative, "
            "brand_p_positive + brand_p_neutral + brand_p_negative FROM post_sentiment").fetchall()}
    engine = get_engine("default")
    spans = [find_spans(PRAISE_AND_PAN, b) for b in ("acme", "globex")]
    want = engine.predict([PRAISE_AND_PAN], [None], targets=[spans]).target_probs[0]
    for k, b in enumerate(("acme", "globex")):  # text only: the head's probabilities, unmoved
        assert got[("both", b)][:2] == pytest.approx((want[k][0], want[k][2]), abs=1e-4)
    assert got[("both", "acme")][:2] != pytest.approx(got[("both", "acme")][2:4], abs=1e-3)
    assert got[("field", "initech")][:2] == pytest.approx(got[("field", "initech")][2:4])  # not named: the post's
    assert all(r[4] == pytest.approx(1) for r in got.values())
    with duckdb.connect(str(db), read_only=True) as con:  # one post, two brands, two labels
        labels = dict(con.sql("SELECT brand, brand_label FROM post_sentiment WHERE post_id = 'contrast'").fetchall())
    assert labels == {"acme": "positive", "globex": "negative"}


def test_a_target_is_found_however_a_corpus_spaced_it_and_dongs_placeholder_is_filled():
    """SemEval-2016 4C writes "valentine 's day" for a text's "Valentine’s Day" and "boko haram" for "Boko  Haram"
    (100 of its devtest rows, each else scored on the post's label); Dong et al. write the target as $T$; a table with
    gaps gives target_start 21.0."""
    from mmsa.data import _with_target_written

    for text, target, found in (("Happy Valentine’s Day!", "valentine 's day", "Valentine’s Day"),
                                ("Boko  Haram just hit Maroua", "boko haram", "Boko  Haram"),
                                ("I sold my $AAPL", "$ AAPL", "$AAPL")):
        assert [text[a:b] for a, b in find_spans(text, target)] == [found]
    assert find_spans("the table", "a b") == [] and find_spans("#BokoHaram", "boko haram") == []
    # a brand the dump names: the whole word where there is one (not the apple of "Pineapple", the ford of "afford"),
    # else the part (#AppleEvent); a corpus's target, every occurrence, as the target heads were trained
    for text, target, found in (("My Apple watch is great. Pineapple pizza is awful", "Apple", ["Apple"]),
                                ("I can't afford much, but my Ford is great", "Ford", ["Ford"]),
                                ("#AppleEvent today", "apple", ["Apple"])):
        assert [text[a:b] for a, b in find_spans(text, target, whole_words=True)] == found
        assert len(find_spans(text, target)) == len(found) + (target == "Apple") + (target == "Ford")
    assert source.validate({"post_id": "f", "created_at": 0, "text": "I can't afford much, but my Ford is great",
                            "brand": "Ford"})["lang"] == "en"  # "afford" kept whole for language id
    dong = _with_target_written({"text": "i love $T$ so much", "target": "lady gaga", "label": "positive"})
    assert dong["text"] == "i love lady gaga so much" and target_spans(dong) == [(7, 16)]
    row = _with_target_written({"text": "so acme and acme", "target": "acme", "target_start": 12.0, "label": "neutral"})
    assert target_spans(row) == [(12, 16)]


def test_evaluate_scores_rows_with_a_target_toward_it(tmp_path):
    from mmsa import evaluate

    rows = [{"text": PRAISE_AND_PAN, "target": "acme", "label": "positive"},
            {"text": PRAISE_AND_PAN, "target": "globex", "label": "negative"},
            {"text": "globex opened a new office in Leeds", "target": "globex", "target_start": 0, "label": "neutral"}]
    data = tmp_path / "targets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = evaluate.evaluate_file(data, "default", backend="torch")
    assert m["toward_target"] is True and m["n"] == 3 and m["targets_not_found"] == 0
    engine = get_engine("default", "torch")
    pred = engine.predict([r["text"] for r in rows], [None] * 3, targets=[[target_spans(r)] for r in rows])
    labels = {"positive": 0, "neutral": 1, "negative": 2}
    want = np.zeros((3, 3), int)
    for r, t in zip(rows, pred.target_probs):
        want[labels[r["label"]], int(t[0].argmax())] += 1
    assert m["confusion"] == want.tolist()  # the head's label toward each row's target
    assert m["text_only"]["n"] == 3  # the post's own text path, beside: one label for both targets
    plain = tmp_path / "plain.jsonl"  # the same rows without their targets: one post label for both brands
    plain.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "target"}) + "\n" for r in rows))
    post = evaluate.evaluate_file(plain, "default", backend="torch")
    assert post["toward_target"] is False
    assert post["text_only"]["per_class_recall"] == m["text_only"]["per_class_recall"]  # the post side: the same
    (tmp_path / "broken.jpg").write_text("not a picture")  # a row whose image does not decode: its text, counted
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "what a day", "image": "broken.jpg", "label": "positive"}) + "\n")
    assert evaluate.evaluate_file(broken, "default", backend="torch")["images_unreadable"] == 1
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no labelled rows"):
        evaluate.evaluate_file(tmp_path / "empty.jsonl", "default", backend="torch")


def test_evaluate_reads_a_brand_streams_files_as_score_reads_dumps(tmp_path, image_server):
    """A judge's file: `brand` (or `aspect`) for the target, `image_url` or an http(s) image, CSV or .gz, a
    "17.0" target_start, an empty target, a row with nothing to read, a French row. Each was dropped silently,
    measured as something else, or refused the whole file."""
    import gzip

    from mmsa import evaluate

    image_server.root.joinpath("p.png").write_bytes(encode(textured_image(64, 64), "PNG"))
    rows = [{"text": PRAISE_AND_PAN, "brand": "acme", "label": "positive"},
            {"text": PRAISE_AND_PAN, "aspect": "globex", "label": "negative"},
            {"text": "so acme and acme", "target": "acme", "target_start": "12.0", "label": "neutral"},
            {"text": "nothing about it here", "target": "", "label": "neutral"},
            {"text": "", "label": "neutral"},
            {"text": "what a day", "image_url": image_server.url("p.png"), "label": "positive"},
            {"text": "quelle journée magnifique avec mes amis à Paris", "label": "positive"}]
    data = tmp_path / "stream.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = evaluate.evaluate_file(data, "default", backend="torch")
    assert (m["n"], m["nothing_to_read"], m["toward_target"], m["targets_not_found"]) == (6, 1, True, 1)
    assert (m["n_with_image"], m["images_unreadable"], m["languages_not_covered"]) == (1, 0, {"fr": 1})
    text = evaluate.format_metrics(m)
    assert "1 rows with neither text nor image: left out" in text and "fr 1: scored here" in text
    toward = [r for r in rows[:3]]  # the same rows named as the README names them: the same measurement
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({**{k: v for k, v in r.items() if k not in ("brand", "aspect")},
                                         "target": r.get("brand") or r.get("aspect") or r["target"]}) + "\n" for r in toward))
    aliased = tmp_path / "aliased.jsonl"
    aliased.write_text("".join(json.dumps(r) + "\n" for r in toward))
    assert evaluate.evaluate_file(named, "default", backend="torch")["confusion"] == \
        evaluate.evaluate_file(aliased, "default", backend="torch")["confusion"]
    table = tmp_path / "stream.csv.gz"  # a spreadsheet's export, gzipped, its trailing empty rows too
    with gzip.open(table, "wt", newline="") as fh:
        fh.write("text,brand,label\n" + "".join(f'"{r["text"]}",{r["brand"]},{r["label"]}\n' for r in rows[:1]) + ",,\n,,\n")
    assert evaluate.evaluate_file(table, "default", backend="torch")["toward_target"] is True
    from mmsa.data import load_jsonl  # training reads the names it was given: no URL image to fail on

    (tmp_path / "train.jsonl").write_text(json.dumps(rows[5]) + "\n")
    assert load_jsonl(tmp_path / "train.jsonl").images == [None]
    (tmp_path / "cp1252.jsonl").write_bytes('{"text": "café", "label": "positive"}\n'.encode("cp1252"))
    with pytest.raises(ValueError, match="cp1252.jsonl: not UTF-8"):
        evaluate.evaluate_file(tmp_path / "cp1252.jsonl", "default", backend="torch")


def test_a_stopped_target_head_cross_validation_resumes_with_the_folds_it_had_not_finished(tmp_path, monkeypatch):
    """Each fold's out-of-fold probabilities are kept as they come: a run stopped after two folds reads those two
    back, fits only the third, and leaves the whole array in the cache, without the fold files."""
    import functools

    from mmsa import targeted
    from mmsa.targeted import cross_validate
    from mmsa.train import TrainConfig, run
    from synthetic import tiny_text_encoder, tiny_vit, write_dataset, write_targeted

    cache = tmp_path / "cache"
    base = TrainConfig(head="text", text_encoder=str(tiny_text_encoder(tmp_path / "bert", layers=2, intermediate=96)),
                       image_encoder=f"hf:{tiny_vit(tmp_path / 'vit')}", epochs=1, hidden=16, folds=3, members=1)
    run(base, write_dataset(tmp_path / "data", n_train=60, n_dev=30), tmp_path / "base", cache_dir=cache, progress=False)
    monkeypatch.setattr(targeted, "pair_set", functools.partial(targeted.pair_set, n=200))  # the made-up pairs: few
    model, data = SentimentModel(tmp_path / "base"), write_targeted(tmp_path / "targeted", texts=8)
    ds, first = cross_validate(model, data, ["top1"], cache_dir=cache, progress=False)
    whole = sorted(cache.glob("target-oof-top1-*.npy"))
    assert len(whole) == 1 and np.allclose(np.load(whole[0]), first["top1"])

    whole[0].unlink()  # as if stopped after folds 0 and 1: their files are there, marked so a refit would show
    fold = group_folds(ds, 3, 0)
    for f in (0, 1):
        np.save(whole[0].with_name(f"{whole[0].stem}-fold{f}.npy"), np.full(((fold == f).sum(), 3), 1 / 3, np.float32))
    _, resumed = cross_validate(model, data, ["top1"], cache_dir=cache, progress=False)
    assert np.allclose(resumed["top1"][fold < 2], 1 / 3)  # read back, not fitted again
    np.testing.assert_allclose(resumed["top1"][fold == 2], first["top1"][fold == 2], atol=1e-5)  # fitted as before
    assert [p.name for p in cache.glob("target-oof-top1-*")] == [whole[0].name]
