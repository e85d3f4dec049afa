"""Fusion heads: shapes, gradients, masking, and text fallback for posts without an image."""

from __future__ import annotations

import pytest
import torch

from mmsa.heads import HEAD_NAMES, Bundle, Ensemble, Feats, _heads_for, build_head


def _feats(b: int = 5, dt: int = 8, di: int = 6, seed: int = 0) -> Feats:
    g = torch.Generator().manual_seed(seed)
    t_mask = torch.ones(b, 7, dtype=torch.bool)
    t_mask[0, 3:] = False
    return Feats(
        t_pooled=torch.randn(b, dt, generator=g),
        i_pooled=torch.randn(b, di, generator=g),
        t_hidden=torch.randn(b, 7, dt, generator=g),
        t_mask=t_mask,
        i_hidden=torch.randn(b, 4, di, generator=g),
        i_mask=torch.ones(b, 4, dtype=torch.bool),
    )


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_every_head_gives_three_logits_and_trains(head):
    torch.manual_seed(0)
    bundle = Bundle(head, 8, 6, hidden=16, dropout=0.1, width=12)
    out = bundle(_feats(), torch.ones(5, dtype=torch.bool))
    assert {k: v.shape for k, v in out.items()} == {k: (5, 3) for k in ("fused", "text", "image")}
    out["fused"].sum().backward()
    grads = [p.grad for p in bundle.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, "no gradient reached the head"


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_rows_without_image_fall_back_to_text(head):
    bundle = Bundle(head, 8, 6, hidden=16, width=12).eval()
    has = torch.tensor([True, False, True, False, True])
    out = bundle(_feats(), has)
    assert torch.equal(out["fused"][~has], out["text"][~has])


@pytest.mark.parametrize("head", ["cmac", "hstec"])
def test_padding_positions_do_not_change_the_output(head):
    bundle = Bundle(head, 8, 6, hidden=16, width=12).eval()
    f = _feats()
    has = torch.ones(5, dtype=torch.bool)
    before = bundle(f, has)["fused"]
    f.t_hidden[0, 3:] = 1e3  # padded positions of row 0
    after = bundle(f, has)["fused"]
    torch.testing.assert_close(before, after)


def test_head_count_adapts_to_width():
    assert _heads_for(384, 12) == 12
    assert _heads_for(20, 12) == 10
    assert _heads_for(7, 12) == 7


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("nope", 8, 6)


def test_ensemble_averages_member_probabilities():
    """The log of the mean probability: a softmax downstream gives the members' average; one
    member gives exactly its own probabilities; rows without an image still fall back to text."""
    torch.manual_seed(0)
    members = [Bundle("native_combine", 8, 6, hidden=16).eval() for _ in range(3)]
    f, has = _feats(), torch.tensor([True, False, True, True, False])
    out = Ensemble(members)(f, has)
    for k in ("fused", "text", "image"):
        want = torch.stack([m(f, has)[k].softmax(-1) for m in members]).mean(0)
        torch.testing.assert_close(out[k].softmax(-1), want)
    torch.testing.assert_close(Ensemble(members[:1])(f, has)["fused"].softmax(-1), members[0](f, has)["fused"].softmax(-1))
    assert torch.equal(out["fused"][~has], out["text"][~has])
