"""Fusion heads from the BERT+ResNet multimodal-sentiment paper, on top of `EncoderOutput`s.

Notation: H = hidden-state sequence, F = pooled vector, T = text, I = image. Every head maps
(text, image) features to 3 logits in `mmsa.schema.LABELS` order. `Bundle` adds the text-only
and image-only classifiers so every post also gets per-modality probabilities; `Ensemble` averages
the probabilities of bundles trained on different folds of the training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmsa.encoders import masked_mean

N_CLASSES = 3
HEAD_NAMES = ("text", "image", "native_cat", "native_combine", "cmac", "hstec", "ote")
HIDDEN_HEADS = frozenset({"cmac", "hstec"})  # heads that read H, not only F


@dataclass
class Feats:
    """One batch of encoder outputs; hidden/mask may be None for pooled-only heads."""

    t_pooled: torch.Tensor
    i_pooled: torch.Tensor
    t_hidden: torch.Tensor | None = None
    t_mask: torch.Tensor | None = None
    i_hidden: torch.Tensor | None = None
    i_mask: torch.Tensor | None = None


class Classifier(nn.Sequential):
    """LayerNorm -> dropout -> MLP: the features differ in scale (MiniLM vs EfficientNet)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__(
            nn.LayerNorm(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, N_CLASSES),
        )


def _heads_for(width: int, wanted: int) -> int:
    """Largest head count <= wanted that divides width (paper uses 12)."""
    return next(h for h in range(min(wanted, width), 0, -1) if width % h == 0)


class TextHead(nn.Module):
    def __init__(self, dt: int, di: int, hidden: int, dropout: float, **_):
        super().__init__()
        self.clf = Classifier(dt, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        return self.clf(f.t_pooled)


class ImageHead(nn.Module):
    def __init__(self, dt: int, di: int, hidden: int, dropout: float, **_):
        super().__init__()
        self.clf = Classifier(di, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        return self.clf(f.i_pooled)


class NativeCat(nn.Module):
    """classifier([F_T; F_I])."""

    def __init__(self, dt: int, di: int, hidden: int, dropout: float, **_):
        super().__init__()
        self.clf = Classifier(dt + di, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        return self.clf(torch.cat([f.t_pooled, f.i_pooled], -1))


class NativeCombine(nn.Module):
    """TextClassifier(F_T) + ImageClassifier(F_I): late fusion of logits."""

    def __init__(self, dt: int, di: int, hidden: int, dropout: float, **_):
        super().__init__()
        self.t = Classifier(dt, hidden, dropout)
        self.i = Classifier(di, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        return self.t(f.t_pooled) + self.i(f.i_pooled)


class CMAC(nn.Module):
    """Bidirectional cross-modal attention: F_T queries H_I, F_I queries H_T, in a shared width."""

    def __init__(self, dt: int, di: int, hidden: int, dropout: float, width: int = 384, n_heads: int = 12):
        super().__init__()
        h = _heads_for(width, n_heads)
        self.pt, self.pi = nn.Linear(dt, width), nn.Linear(di, width)
        self.ln_t, self.ln_i = nn.LayerNorm(width), nn.LayerNorm(width)
        self.i2t = nn.MultiheadAttention(width, h, dropout=dropout, batch_first=True)
        self.t2i = nn.MultiheadAttention(width, h, dropout=dropout, batch_first=True)
        self.t = Classifier(dt + width, hidden, dropout)
        self.i = Classifier(di + width, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        ht, hi = self.ln_t(self.pt(f.t_hidden)), self.ln_i(self.pi(f.i_hidden))
        qt, qi = self.ln_t(self.pt(f.t_pooled)).unsqueeze(1), self.ln_i(self.pi(f.i_pooled)).unsqueeze(1)
        a_i2t, _ = self.i2t(qt, hi, hi, key_padding_mask=~f.i_mask)
        a_t2i, _ = self.t2i(qi, ht, ht, key_padding_mask=~f.t_mask)
        return self.t(torch.cat([f.t_pooled, a_i2t[:, 0]], -1)) + self.i(torch.cat([f.i_pooled, a_t2i[:, 0]], -1))


def _encoder(width: int, n_heads: int, n_layers: int, dropout: float) -> nn.TransformerEncoder:
    """The paper's fusion transformer (pre-norm, feed-forward 2x width) shared by HSTEC and OTE."""
    layer = nn.TransformerEncoderLayer(
        width, _heads_for(width, n_heads), 2 * width, dropout, batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)


class HSTEC(nn.Module):
    """Transformer encoder over [H_T; H_I] (shared width + modality embedding), mean-pooled into a."""

    def __init__(
        self, dt: int, di: int, hidden: int, dropout: float, width: int = 384, n_heads: int = 12, n_layers: int = 1
    ):
        super().__init__()
        self.pt, self.pi = nn.Linear(dt, width), nn.Linear(di, width)
        self.modality = nn.Parameter(torch.zeros(2, width))
        self.enc = _encoder(width, n_heads, n_layers, dropout)
        self.t = Classifier(dt + width, hidden, dropout)
        self.i = Classifier(di + width, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        seq = torch.cat([self.pt(f.t_hidden) + self.modality[0], self.pi(f.i_hidden) + self.modality[1]], 1)
        mask = torch.cat([f.t_mask, f.i_mask], 1)
        a = masked_mean(self.enc(seq, src_key_padding_mask=~mask), mask)
        return self.t(torch.cat([f.t_pooled, a], -1)) + self.i(torch.cat([f.i_pooled, a], -1))


class OTE(nn.Module):
    """Transformer encoder over the 2-token sequence [F_I, F_T], then one classifier."""

    def __init__(
        self, dt: int, di: int, hidden: int, dropout: float, width: int = 384, n_heads: int = 12, n_layers: int = 1
    ):
        super().__init__()
        self.pt, self.pi = nn.Linear(dt, width), nn.Linear(di, width)
        self.modality = nn.Parameter(torch.zeros(2, width))
        self.enc = _encoder(width, n_heads, n_layers, dropout)
        self.clf = Classifier(2 * width, hidden, dropout)

    def forward(self, f: Feats) -> torch.Tensor:
        seq = torch.stack([self.pi(f.i_pooled) + self.modality[0], self.pt(f.t_pooled) + self.modality[1]], 1)
        return self.clf(self.enc(seq).flatten(1))


_HEADS = {
    "text": TextHead,
    "image": ImageHead,
    "native_cat": NativeCat,
    "native_combine": NativeCombine,
    "cmac": CMAC,
    "hstec": HSTEC,
    "ote": OTE,
}


def build_head(name: str, dt: int, di: int, hidden: int = 256, dropout: float = 0.1, **kwargs) -> nn.Module:
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEAD_NAMES)}")
    return _HEADS[name](dt, di, hidden=hidden, dropout=dropout, **kwargs)


class Bundle(nn.Module):
    """Fusion head + text-only + image-only classifiers, trained together (sum of the three losses).

    For head "text"/"image" the fused output is that branch itself. Rows without an image get
    the text branch's logits as their fused logits.
    """

    def __init__(self, head: str, dt: int, di: int, hidden: int = 256, dropout: float = 0.1, **kwargs):
        super().__init__()
        self.head_name = head
        self.text = TextHead(dt, di, hidden, dropout)
        self.image = ImageHead(dt, di, hidden, dropout)
        self.fusion = None if head in ("text", "image") else build_head(head, dt, di, hidden, dropout, **kwargs)

    @property
    def needs_hidden(self) -> bool:
        return self.head_name in HIDDEN_HEADS

    def forward(self, f: Feats, has_image: torch.Tensor) -> dict[str, torch.Tensor]:
        t, i = self.text(f), self.image(f)
        fused = {"text": t, "image": i}.get(self.head_name)
        if fused is None:
            fused = self.fusion(f)
        fused = torch.where(has_image.unsqueeze(-1), fused, t)
        return {"fused": fused, "text": t, "image": i}


class LinearStack(nn.Module):
    """Linear heads on the pooled vectors, stacked (fitted by `mmsa.stack`).

    Each branch is one linear layer (standardisation folded in) read as log-probabilities; the meta layer
    maps the branches' log-probabilities to the post's logits. Outputs: "fused" = the meta head for posts
    with an image, the general text head for posts without one; "text" = the general text head (the text's
    own sentiment, trained on general tweets); "image" = the image head (the image's own sentiment, trained
    on the image labels). Temperatures (text, fused, image) are buffers, fitted out of fold.
    """

    needs_hidden = False
    LOG_EPS = float(torch.log(torch.tensor(1e-6)))  # the fit clips probabilities at 1e-6 (mmsa.stack.logp)

    def __init__(self, dt: int, di: int, branches: list[str], **_):
        super().__init__()
        self.general = nn.Linear(dt, N_CLASSES)
        self.image = nn.Linear(di, N_CLASSES)
        self.branches = nn.ModuleDict({n: nn.Linear(dt if n.startswith("text") else di, N_CLASSES) for n in branches})
        self.meta = nn.Linear(N_CLASSES * len(branches), N_CLASSES)
        self.register_buffer("temperature", torch.ones(3))

    def forward(self, f: Feats, has_image: torch.Tensor) -> dict[str, torch.Tensor]:
        z = torch.cat([lin(f.t_pooled if n.startswith("text") else f.i_pooled).log_softmax(-1).clamp_min(self.LOG_EPS)
                       for n, lin in self.branches.items()], -1)
        text = self.general(f.t_pooled) / self.temperature[0]
        fused = torch.where(has_image.unsqueeze(-1), self.meta(z) / self.temperature[1], text)
        return {"fused": fused, "text": text, "image": self.image(f.i_pooled) / self.temperature[2]}


def from_config(cfg: dict) -> nn.Module:
    """The head module a model folder's config.json describes (weights loaded by the caller)."""
    if cfg["head"] == "stack":
        return LinearStack(cfg["text_dim"], cfg["image_dim"], **cfg["head_kwargs"])
    return Ensemble([
        Bundle(cfg["head"], cfg["text_dim"], cfg["image_dim"], cfg["hidden"], cfg["dropout"], **cfg.get("head_kwargs", {}))
        for _ in range(cfg["members"])
    ])


class Ensemble(nn.Module):
    """Bundles trained on different folds of the training set (mmsa.train), averaged.

    Returns the log of the members' mean probabilities per output, so a softmax downstream
    gives the averaged probabilities; one member gives exactly its own probabilities.
    """

    def __init__(self, members: list[Bundle]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def needs_hidden(self) -> bool:
        return self.members[0].needs_hidden

    def forward(self, f: Feats, has_image: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = [m(f, has_image) for m in self.members]
        return {k: torch.stack([o[k].softmax(-1) for o in outs]).mean(0).log() for k in outs[0]}


class TargetHead(nn.Module):
    """Sentiment toward a target (a brand) from the post's token states before the text encoder's top `blocks`
    blocks, and the target's token span.

    A learned vector marks the span's tokens; the encoder's own top blocks, copied (`from_layers`) and
    fine-tuned, run again over the marked states, so every token reads the post knowing the target; a linear
    layer maps [span mean, post mean] of their output to logits. Copying the blocks that made the post's own
    final states means that, before training, the head sees exactly what the post-level path sees. It reruns
    `blocks` blocks, not the encoder, per (post, target). `temperature` is fitted out of fold.
    `position_buckets`: for an MPNet encoder, whose blocks add a learned bias per bucket of relative position
    to their attention scores, the buckets of that bias (copied with the blocks; 0: BERT-style blocks, none).
    """

    def __init__(self, dim: int, blocks: int = 1, n_heads: int = 12, dropout: float = 0.1, position_buckets: int = 0):
        super().__init__()
        self.marker = nn.Parameter(torch.zeros(dim))
        heads = _heads_for(dim, n_heads)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                       layer_norm_eps=1e-12, batch_first=True) for _ in range(blocks))
        self.position_bias = nn.Embedding(position_buckets, heads) if position_buckets else None
        self.out = nn.Linear(2 * dim, N_CLASSES)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """Logits (R, 3) for rows of states (R, L, D), real-token mask (R, L) and target-token mask (R, L)."""
        x = self.states(hidden, mask, span)
        return self.out(torch.cat([masked_mean(x, span), masked_mean(x, mask)], -1)) / self.temperature

    def states(self, hidden: torch.Tensor, mask: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        """(R, L, D): the blocks' output over the states with the target's tokens marked."""
        x = hidden + span.unsqueeze(-1).to(hidden.dtype) * self.marker
        if self.position_bias is None:
            for block in self.blocks:
                x = block(x, src_key_padding_mask=~mask)
            return x
        bias = self._relative_bias(mask)
        for block in self.blocks:
            x = self._biased_block(block, x, bias)
        return x

    def _biased_block(self, b: nn.TransformerEncoderLayer, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Block `b` (post-LayerNorm, as BERT's and MPNet's) with an additive attention bias (R, heads, L, L),
        spelled out: nn.TransformerEncoderLayer's inference fast path gives NaN with a per-head float mask."""
        att = b.self_attn
        rows, length, dim = x.shape
        q, k, v = (t.view(rows, length, att.num_heads, -1).transpose(1, 2)
                   for t in F.linear(x, att.in_proj_weight, att.in_proj_bias).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=att.dropout if self.training else 0.0)
        a = att.out_proj(a.transpose(1, 2).reshape(rows, length, dim))
        x = b.norm1(x + b.dropout1(a))
        return b.norm2(x + b.dropout2(b.linear2(b.dropout(b.activation(b.linear1(x))))))

    def _relative_bias(self, mask: torch.Tensor) -> torch.Tensor:
        """(R, heads, L, L) additive attention scores for a real-token mask (R, L): MPNet's bias per relative
        position (as its encoder computes it), -inf toward padding."""
        from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

        rows, length = mask.shape
        pos = torch.arange(length, device=mask.device)
        bucket = MPNetEncoder.relative_position_bucket(pos[None, :] - pos[:, None], self.position_bias.num_embeddings)
        bias = self.position_bias(bucket).permute(2, 0, 1)  # (heads, L, L)
        return bias.unsqueeze(0).masked_fill(~mask[:, None, None, :], float("-inf"))  # (R, heads, L, L)

    @torch.no_grad()
    def from_layers(self, layers: Sequence[nn.Module], position_bias: nn.Embedding | None = None) -> TargetHead:
        """Copy an encoder's blocks, one per block, in order: Hugging Face `BertLayer`s (q/k/v, output dense, two
        LayerNorms, FFN) or `MPNetLayer`s (the same under other names, with the encoder's shared
        `relative_attention_bias` as `position_bias`)."""
        if len(layers) != len(self.blocks):
            raise ValueError(f"{len(layers)} layers for a head of {len(self.blocks)} blocks")
        if (position_bias is None) != (self.position_bias is None):
            raise ValueError("an MPNet encoder's blocks need its relative position bias, and only they have one")
        if position_bias is not None:
            self.position_bias.weight.copy_(position_bias.weight)
        for layer, b in zip(layers, self.blocks):
            att = layer.attention
            if hasattr(att, "attn"):  # MPNetLayer
                q, k, v, o, norm = att.attn.q, att.attn.k, att.attn.v, att.attn.o, att.LayerNorm
            else:
                q, k, v, o, norm = att.self.query, att.self.key, att.self.value, att.output.dense, att.output.LayerNorm
            b.self_attn.in_proj_weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            b.self_attn.in_proj_bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
            pairs = [(b.self_attn.out_proj, o), (b.norm1, norm),
                     (b.linear1, layer.intermediate.dense), (b.linear2, layer.output.dense), (b.norm2, layer.output.LayerNorm)]
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        return self
