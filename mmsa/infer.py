"""One batched inference engine for scoring, evaluation and backfills.

`Engine(model).predict(texts, images)` is the only prediction path (scoring, evaluation,
backfills, benchmarks): texts are tokenized once and bucketed by token length so each batch pads
only to its own longest text; the image encoder runs only on the rows that have an image; batches are prepared
one ahead in a thread on CUDA (tokenize, stack, pin, non-blocking copy) while the current one runs.
Every forward runs on the engine's own thread, and on CUDA input shapes are kept few (text widths
rounded up to 8, image rows padded to the batch's size), because cuDNN builds its conv plans per thread
and per shape, seconds each.

Device: CUDA when present, else CPU, overridable. On CUDA the encoders run under fp16 autocast
(fp32's labels at 1.3x its speed; bf16 changed labels), a batch that
overflows fp16 is rerun in fp32, and an out-of-memory error halves the batch size and retries,
so no post is lost. On CPU the engine uses the cores this process may use: with ONNX Runtime as
that many single-threaded streams, each running a whole batch.

Backends (the text and image encoders; the small fusion head always runs in torch fp32):
- "torch": the model's own modules; the default on CUDA.
- "onnx": ONNX Runtime on graphs exported from the model's weights on first use into a cache folder
  (later runs load the graphs and the tokenizer only, not the encoders); fp32, the same probabilities
  as "torch" to ~1e-5 at 2.6x its speed: the default on CPU.
- "int8": dynamic int8 quantisation (per channel) of the text encoder's Linear layers (torch.ao).
  The image encoder stays fp32: quantize_dynamic only covers Linear/RNN layers, not EfficientNet's
  convs. Lossy here: MiniLM's activations quantise badly (about 95% label agreement on the dev set).
- "onnx-int8": "onnx" with the text graph's MatMuls dynamically quantised (per channel) by ORT;
  lossy like "int8".
torch.compile is not offered: it did not finish compiling on a 2-core CPU. Figures for all of this:
benchmarks/results/infer.md.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from mmsa import files
from mmsa.files import default_cache_dir
from mmsa.encoders import fast_tokenizer, pad_ids, span_token_mask, stack_images, target_window, token_ids, unpadded
from mmsa.heads import Feats
from mmsa.model import Prediction, SentimentModel, blend_targets, load_model
from mmsa.options import BACKENDS, usable_cores

log = logging.getLogger(__name__)

ONNX_OPSET = 18
GRAPHS = 3  # the exported cores' inputs and outputs: a change re-exports every cached graph


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_backend(device: torch.device) -> str:
    """$MMSA_BACKEND, else "onnx" on CPU (same labels, fastest there) and "torch" elsewhere."""
    return os.environ.get("MMSA_BACKEND") or ("onnx" if device.type == "cpu" else "torch")


def default_batch_size(device: torch.device) -> int:
    """32 on CPU (larger batches fall out of cache); 128 on a GPU, where batch 32 leaves the device idle
    between kernel launches."""
    return 32 if device.type == "cpu" else 128


def cpu_threads() -> int:
    """Cores this process may run on (mmsa.options.usable_cores)."""
    return usable_cores()


@dataclass
class Batch:
    """One model input. `idx`: the rows' positions in the caller's lists; `pixels`: the images of
    the rows where `has` is True, in order, in its first `images` rows (on CUDA zero rows follow, up
    to the batch's size); None when no row has an image. `targets`: per row, one token mask per target
    (`span_token_mask`), empty for a row without targets."""

    idx: np.ndarray
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    has: torch.Tensor
    pixels: torch.Tensor | None
    images: int
    targets: list[list[np.ndarray]]

    def rows(self, start: int, stop: int) -> "Batch":
        """Rows start..stop (the OOM back-off's smaller batches); image rows follow their posts."""
        first, last = int(self.has[:start].sum()), int(self.has[:stop].sum())
        pixels = None if self.pixels is None or first == last else self.pixels[first:last]
        return Batch(self.idx[start:stop], self.input_ids[start:stop], self.attention_mask[start:stop],
                     self.has[start:stop], pixels, last - first, self.targets[start:stop])


def prefetch(items: Iterable, depth: int = 1) -> Iterator:
    """Yield `items` while a background thread produces up to `depth` of the next ones."""
    it, done = iter(items), object()
    with ThreadPoolExecutor(1, thread_name_prefix="mmsa-prefetch") as pool:
        pending = [pool.submit(next, it, done) for _ in range(depth)]
        while pending:
            item = pending.pop(0).result()
            if item is done:
                break
            pending.append(pool.submit(next, it, done))
            yield item


class _TextCore(nn.Module):
    """(input_ids, attention_mask) -> (hidden, pooled), and with `tap` the states the model's target head
    reads: the exportable part of a TextEncoder."""

    def __init__(self, encoder, tap: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.tap = tap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self.encoder(input_ids, attention_mask, self.tap)
        return (out.hidden, out.pooled) if self.tap is None else (out.hidden, out.pooled, out.tapped)


class _ImageCore(nn.Module):
    """pixels (B,H,W,3) uint8, as batched -> (hidden (B,L,C), pooled): the exportable part of an
    ImageEncoder, its layout change and normalisation included, so that with ONNX Runtime the batch is
    handed over as it is, without float copies of it outside the graph."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor):
        out = self.encoder(self.encoder.normalize(pixels))
        return out.hidden, out.pooled


class Engine:
    """Batched, bucketed inference over a SentimentModel: its own modules, or their cached ONNX graphs."""

    def __init__(
        self,
        model: SentimentModel,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        backend: str | None = None,
        cache_dir: str | Path | None = None,
        bucket: bool = True,
        threads: int | None = None,
        wrap_cores: Callable[[Callable, Callable], tuple[Callable, Callable]] | None = None,
        targets_only: bool = False,
    ):
        """`wrap_cores(text core, image core)` returns the pair the engine runs instead (each takes and gives
        what the original does): torch.compile for a benchmark, an injected fault for a test. `targets_only`:
        predict fills only `target_probs` (text alone, no images), running the text encoder only up to the
        states the target head reads, as a borrower's engine needs of its lender."""
        self.device = pick_device(device)
        backend = backend or default_backend(self.device)
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.model = model
        self.targets_only = targets_only
        if targets_only and model.target_head is None:
            raise ValueError(f"targets_only needs a model with a target head; {model.version} has none")
        self.backend = backend
        self.batch_size = batch_size or default_batch_size(self.device)
        self.fits: int | None = None  # after an out-of-memory: the largest batch known to fit
        self.bucket = bucket
        self.threads = threads or cpu_threads()
        # ONNX Runtime on CPU: single-threaded sessions, one batch per thread, `threads` batches at once,
        # because one session split over threads waits at every op for the slowest of them.
        self.streams = self.threads if backend in ("onnx", "onnx-int8") and self.device.type == "cpu" else 1
        self.version = model.version
        if self.device.type == "cpu":
            torch.set_num_threads(self.threads // self.streams)
        elif backend in ("int8", "onnx", "onnx-int8"):
            raise ValueError(f"backend {backend!r} is CPU-only; use 'torch' on {self.device}")
        self.max_length = model.max_length
        self.image_size = model.image_size
        self.image_dim = model.image_dim
        self.bundle, self.target = model.bundle, model.target_head
        if torch.device(model.device) != self.device:  # leave the cached model where it is
            self.bundle = copy.deepcopy(model.bundle).to(self.device).eval()
            self.target = copy.deepcopy(model.target_head).to(self.device).eval() if model.target_head is not None else None
        # A model that borrows another's target head (SentimentModel.target_model) scores brands through
        # that model's own engine (its encoder makes the states the head reads), built when first needed.
        self._borrowed = (model.target_model, dict(device=device, batch_size=batch_size, backend=backend,
                                                   cache_dir=cache_dir, bucket=bucket, threads=threads))
        self._target_engine: Engine | None = None
        self._target_engine_lock = threading.Lock()
        self.prefetch = self.device.type == "cuda"
        # Few shapes on CUDA, as cuDNN plans every conv per shape: image rows padded to the batch's size
        # (else each image count is a new shape), text widths rounded up to a multiple of 8.
        self.fixed_shapes = self.device.type == "cuda"
        # Every predict runs on this one thread, as PyTorch keeps cuDNN's plans per thread (a new caller
        # thread would build them again); it also serialises concurrent callers.
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="mmsa-infer")
        self._streams = ThreadPoolExecutor(self.streams, thread_name_prefix="mmsa-stream") if self.streams > 1 else None
        self._feed = threading.Lock()
        self.autocast = torch.float16 if self.device.type == "cuda" else None
        tokenizer, self._text, self._image = self._build(backend, Path(cache_dir) if cache_dir else default_cache_dir())
        if wrap_cores is not None:
            self._text, self._image = wrap_cores(self._text, self._image)
        self.pad_id = unpadded(tokenizer, self.max_length)
        self.tokenizer = tokenizer

    @property
    def text_core(self) -> Callable:
        """(input ids, attention mask) -> (hidden, pooled): the text encoder as this engine runs it."""
        return self._text

    @property
    def image_core(self) -> Callable:
        """pixels (uint8, B x H x W x 3) -> (hidden, pooled): the image encoder as this engine runs it."""
        return self._image

    # ---- backends -------------------------------------------------------------------------------

    def _build(self, backend: str, cache_dir: Path):
        """(tokenizer, text core, image core; None with targets_only). With cached ONNX graphs the model's
        encoders are never loaded."""
        if backend in ("onnx", "onnx-int8"):
            int8 = backend == "onnx-int8"
            folder = export_onnx(self.model, cache_dir, int8_text=int8, targets_only=self.targets_only)
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            return (tokenizer, _OrtRunner(folder / text_graph(self.targets_only, int8)),
                    None if self.targets_only else _OrtRunner(folder / "image.onnx"))
        if self.targets_only:
            text, image = self.model.text_encoder.upto(self.model.target_tap), None
        else:
            text, image = self.model.text_encoder, self.model.image_encoder
        if torch.device(self.model.device) != self.device:
            text, image = (copy.deepcopy(m).to(self.device).eval() if m is not None else None for m in (text, image))
        text_core = _TextCore(text, None if self.targets_only else self.model.target_tap).eval()
        image_core = _ImageCore(image).eval() if image is not None else None
        if backend == "int8":
            qconfig = {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
            text_core = torch.ao.quantization.quantize_dynamic(copy.deepcopy(text_core), qconfig, dtype=torch.qint8)
        return fast_tokenizer(text.tokenizer), text_core, image_core

    # ---- batching -------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated as the model was trained, unpadded (mmsa.encoders.token_ids)."""
        return token_ids(self.tokenizer, texts)

    def order(self, texts: Sequence[str]) -> np.ndarray:
        """The row positions in the order predict takes them: a caller that fetches images in this order
        gives the model its first batches' images first."""
        return self._order(self.tokenize(texts))[0]

    def _order(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(order, token lengths): by token length when bucketing (stable), else as given."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        return (np.argsort(lengths, kind="stable") if self.bucket else np.arange(len(ids))), lengths

    def batches(self, texts: Sequence[str], images: Sequence[np.ndarray | None], batch_size: int,
                targets: Sequence[Sequence[Sequence[tuple[int, int]]]] | None = None) -> Iterator[Batch]:
        """Batches of rows ordered by token length (when bucketing), padded to their own longest text.
        Reads `images[i]` only as row i's batch is built. `targets`: per row, the character spans of each
        target (a list of spans per target)."""
        ids = self.tokenize(texts)
        order, _ = self._order(ids)
        pin = self.device.type == "cuda"
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            input_ids, mask = pad_ids([ids[i] for i in idx], self.pad_id, multiple=8 if self.fixed_shapes else 1)
            has = np.array([images[i] is not None for i in idx], dtype=bool)
            pixels = None
            if has.any():
                arr = stack_images([images[i] for i in idx[has]], self.image_size)
                if self.fixed_shapes and len(arr) < len(idx):
                    arr = np.concatenate([arr, np.zeros((len(idx) - len(arr), *arr.shape[1:]), np.uint8)])
                pixels = self._to_device(torch.from_numpy(arr), pin)
            marks = [[] for _ in idx]
            if targets is not None and self.target is not None:
                per_target = [(r, spans) for r, i in enumerate(idx) for spans in targets[i]]
                masks = span_token_mask(self.tokenizer, [texts[idx[r]] for r, _ in per_target], [sp for _, sp in per_target])
                for (r, _), m in zip(per_target, masks):
                    marks[r].append(m)
            yield Batch(
                idx,
                self._to_device(torch.from_numpy(input_ids), pin),
                self._to_device(torch.from_numpy(mask), pin),
                self._to_device(torch.from_numpy(has), pin),
                pixels,
                int(has.sum()),
                marks,
            )

    def _to_device(self, x: torch.Tensor, pin: bool) -> torch.Tensor:
        return x.pin_memory().to(self.device, non_blocking=True) if pin else x

    # ---- forward --------------------------------------------------------------------------------

    def forward(self, b: Batch, autocast: bool = True) -> dict[str, np.ndarray]:
        """Probabilities ("fused", "text", "image", and "target" for the batch's targets; float32 numpy) for one
        batch; with targets_only, "target" alone. A batch whose half-precision run overflows (a non-finite
        probability) is run again in fp32."""
        autocast = autocast and self.autocast is not None
        out = self._target_logits(b, autocast) if self.targets_only else self._logits(b, autocast)
        probs = {k: v.softmax(-1).float().cpu().numpy() for k, v in out.items()}
        if autocast and not all(np.isfinite(p).all() for p in probs.values()):
            log.warning("non-finite probabilities under %s autocast; batch of %d run again in fp32", self.autocast, len(b.idx))
            return self.forward(b, autocast=False)
        return probs

    def _logits(self, b: Batch, autocast: bool) -> dict[str, torch.Tensor]:
        n = len(b.idx)
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=autocast):
            t_hidden, t_pooled, *tapped = self._text(b.input_ids, b.attention_mask)
            i_pooled = torch.zeros(n, self.image_dim, device=self.device)
            i_hidden, i_mask = None, None
            if b.pixels is not None:
                h, p = self._image(b.pixels)
                h, p = h[: b.images], p[: b.images]  # drop the zero rows that keep the shape fixed
                i_pooled[b.has] = p.to(i_pooled.dtype)
            if self.bundle.needs_hidden:  # rows without an image: one zero patch (masked in, as in training)
                width = h.shape[1] if b.pixels is not None else 1
                i_hidden = torch.zeros(n, width, self.image_dim, device=self.device)
                if b.pixels is not None:
                    i_hidden[b.has] = h.to(i_hidden.dtype)
                i_mask = torch.ones(n, width, dtype=torch.bool, device=self.device)
            mask = b.attention_mask.bool()
            f = Feats(t_pooled.float(), i_pooled, t_hidden.float(), mask, i_hidden, i_mask)
        out = self.bundle(f, b.has)  # fp32, outside autocast
        if any(b.targets):
            out["target"] = self._toward_targets(tapped[0].float(), mask, b.targets)
        return out

    def _target_logits(self, b: Batch, autocast: bool) -> dict[str, torch.Tensor]:
        """A targets_only engine's: its text core stops at the states the target head reads."""
        with torch.autocast(self.device.type, dtype=self.autocast, enabled=autocast):
            hidden = self._text(b.input_ids, b.attention_mask)[0]
        return {"target": self._toward_targets(hidden.float(), b.attention_mask.bool(), b.targets)} if any(b.targets) else {}

    def _toward_targets(self, hidden: torch.Tensor, mask: torch.Tensor, targets: list[list[np.ndarray]]) -> torch.Tensor:
        """Logits toward every target of the batch's rows, in row then target order: the target head over
        each row's states with the target's tokens marked (a target no token covers: the whole text)."""
        rows = [r for r, ms in enumerate(targets) for _ in ms]
        span = torch.zeros(len(rows), hidden.shape[1], dtype=torch.bool)
        for k, m in enumerate(m for ms in targets for m in ms):
            span[k, : len(m)] = torch.from_numpy(m[: hidden.shape[1]])
        span = span.to(self.device)
        keep = mask[rows]
        span = torch.where(span.any(1, keepdim=True), span, keep)
        return self.target(hidden[rows], keep, span)

    def _run(self, b: Batch) -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        """forward(b), or on CUDA out-of-memory: halve the batch size (kept for later batches) and go
        on through b's rows in pieces of that size, so no post is lost and none is tried twice at a
        size that already failed."""
        start, size = 0, min(len(b.idx), self.fits or len(b.idx))
        while start < len(b.idx):
            part = b if size == len(b.idx) else b.rows(start, start + size)
            try:
                out = self.forward(part)
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                out = None  # handled below, outside the handler: its traceback pins the failed attempt's tensors
            if out is None:
                size = size // 2
                self.fits = self.batch_size = min(self.batch_size, size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of memory at batch %d; batch size now %d", len(part.idx), size)
                continue
            yield part, out
            start += len(part.idx)

    def predict(
        self, texts: Sequence[str], images: Sequence[np.ndarray | None], batch_size: int | None = None,
        targets: Sequence[Sequence[Sequence[tuple[int, int]]]] | None = None,
    ) -> Prediction:
        """images: uint8 RGB image_size x image_size x 3 arrays or None, aligned with texts. `targets`: per
        row, the character spans of each target it names (brands); with a model that has a target head (its own
        or borrowed), Prediction.target_probs holds each row's (targets, 3) probabilities toward them, from the text.

        Concurrent callers take turns (Prediction.queued_s: how long this one waited). With streams, the
        next caller's first batches are queued as soon as this one's last is, so the streams do not sit
        idle while one caller's last batch finishes (one core, up to a batch's time, every shard)."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        called = time.perf_counter()
        if self._streams is not None:
            pred, unmarked = self._predict(texts, images, batch_size, called, targets)
        else:
            pred, unmarked = self._worker.submit(self._predict, texts, images, batch_size, called, targets).result()
        if targets is not None and self._borrowed[0] not in (None, self.model):
            pred.target_probs = self._borrowed_targets(texts, targets, batch_size, pred.target_probs)
        if unmarked:
            self._late_targets(texts, targets, batch_size, pred.target_probs, unmarked)
        return pred

    def _late_targets(self, texts: Sequence[str], targets, batch_size: int | None, probs: list[np.ndarray],
                      unmarked: list[tuple[int, int]]) -> None:
        """Score again, in `probs`, each (row, target) of `unmarked` that the encoder's truncation cut off (a brand
        named late in a long post: read toward the whole text, no token marked), over a window of its text that
        starts near it (`target_window`, which marks it): one more text pass per such target, through `predict`,
        so a borrowed head's share is windowed too."""
        late = [(i, j, w) for i, j in unmarked if (w := target_window(self.tokenizer, texts[i], targets[i][j])) is not None]
        if not late:
            return
        sub = self.predict([texts[i][w:] for i, _, w in late], [None] * len(late), batch_size,
                           [[[(a - w, b - w) for a, b in targets[i][j]]] for i, j, w in late])
        for (i, j, _), p in zip(late, sub.target_probs):
            probs[i] = probs[i].copy()
            probs[i][j] = p[0]

    def _borrowed_targets(self, texts: Sequence[str], targets, batch_size: int | None,
                          own: list[np.ndarray] | None) -> list[np.ndarray]:
        """Per row, (its targets, 3) from the borrowed target head (the lender's targets_only engine over the
        text of only the rows that name one), blended with this model's own head's `own`, if it has one
        (`blend_targets` with weight `target_blend`)."""
        out = [np.zeros((0, 3), np.float32)] * len(texts)
        named = [i for i, t in enumerate(targets) if len(t)]
        if named:
            with self._target_engine_lock:
                if self._target_engine is None:
                    self._target_engine = Engine(self._borrowed[0], targets_only=True, **self._borrowed[1])
            sub = self._target_engine.predict([texts[i] for i in named], [None] * len(named), batch_size,
                                             [targets[i] for i in named])
            for i, p in zip(named, sub.target_probs):
                if own is not None:
                    p = blend_targets(p, own[i], self.model.target_blend)
                out[i] = p.astype(np.float32)
        return out

    def warm_up(self) -> None:
        """On CUDA, score one full batch of blank posts with images, so that the first real batch
        finds the CUDA context, kernels and cuDNN plans ready (a no-op on CPU: nothing to build)."""
        if self.device.type == "cuda":
            blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
            self.predict(["warm up"] * self.batch_size, [blank] * self.batch_size)

    def _predict(self, texts: Sequence[str], images: Sequence[np.ndarray | None], batch_size: int | None,
                 called: float, targets=None) -> tuple[Prediction, list[tuple[int, int]]]:
        """(the prediction, the (row, target) pairs whose target no token marked, for `_late_targets`)."""
        n = len(texts)
        probs = np.zeros((n, 3), np.float32)
        text_probs = np.zeros((n, 3), np.float32)
        image_probs = np.full((n, 3), np.nan, np.float32)
        target_probs = None if targets is None or self.target is None else [np.zeros((0, 3), np.float32)] * n
        unmarked: list[tuple[int, int]] = []  # (row, target) no token marks: cut off by truncation, or not in the text
        if n == 0:  # a shard of only rejected rows: nothing to batch
            return Prediction(probs, text_probs, image_probs, target_probs=target_probs), unmarked

        def fill(outs: list[tuple[Batch, dict[str, np.ndarray]]]) -> None:
            for b, out in outs:
                if not self.targets_only:
                    probs[b.idx], text_probs[b.idx] = out["fused"], out["text"]
                    has = b.has.cpu().numpy()
                    image_probs[b.idx[has]] = out["image"][has]
                if "target" in out:
                    ends = np.cumsum([len(ms) for ms in b.targets])
                    for r, (i, end) in enumerate(zip(b.idx, ends)):
                        target_probs[i] = out["target"][end - len(b.targets[r]):end]
                        unmarked.extend((int(i), j) for j, m in enumerate(b.targets[r]) if not m.any() and len(targets[i][j]))

        batches = self.batches(texts, images, batch_size or self.batch_size, targets)
        if self._streams is None:  # on the engine's own thread, one caller at a time
            queued = time.perf_counter() - called
            for batch in prefetch(batches) if self.prefetch else batches:
                fill(self._run_all(batch))
        else:
            pending: deque = deque()
            with self._feed:  # one caller queues batches at a time, at most one more than there are streams
                queued = time.perf_counter() - called
                for batch in batches:
                    pending.append(self._streams.submit(self._run_all, batch))
                    if len(pending) > self.streams:
                        fill(pending.popleft().result())
            while pending:
                fill(pending.popleft().result())
        return Prediction(probs, text_probs, image_probs, queued, target_probs), unmarked

    def _run_all(self, b: Batch) -> list[tuple[Batch, dict[str, np.ndarray]]]:
        with torch.inference_mode():  # a per-thread mode: set in the thread that runs the batch
            return list(self._run(b))


# ---- ONNX -----------------------------------------------------------------------------------------


class _OrtRunner:
    """An ONNX Runtime session called like the torch cores: tensors in, (hidden, pooled[, tapped]) tensors out."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one stream (Engine.streams): the engine runs one session call per core
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No memory patterns: ORT plans one per input shape, and bucketed batches bring new shapes all
        # through a run, each planned block page-faulted afresh.
        opts.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {name: t.contiguous().numpy() for name, t in zip(self.inputs, tensors)}
        return tuple(torch.from_numpy(out) for out in self.session.run(None, feeds))


_EXPORT_LOCK = threading.Lock()


def text_graph(targets_only: bool = False, int8: bool = False) -> str:
    """The file name of the text encoder's graph in an `export_onnx` folder."""
    return ("text-tap" if targets_only else "text") + ("-int8" if int8 else "") + ".onnx"


def export_onnx(model: SentimentModel, cache_dir: Path, int8_text: bool = False, targets_only: bool = False) -> Path:
    """Export both encoders and their tokenizer once into cache_dir/onnx/<key>/ and return that folder:
    text.onnx, image.onnx, tokenizer.json (and text-int8.onnx with int8_text). With targets_only, the text
    graph is text-tap.onnx, the encoder up to the states its target head reads (`TextEncoder.upto`), and no
    image graph (a targets_only Engine's).

    The key covers torch, the opset, the graphs' interface (GRAPHS), the model's version and the files
    the encoders load from (SentimentModel.source_key), so a changed model never reuses a stale graph,
    and a cached one is found without loading the encoders. Files are written under a temporary name,
    then renamed."""
    key = hashlib.sha256(f"{torch.__version__}|{ONNX_OPSET}|{GRAPHS}|{model.version}|{model.source_key()}".encode())
    folder = cache_dir / "onnx" / key.hexdigest()[:16]
    text_path, image_path, tok_path = folder / text_graph(targets_only), folder / "image.onnx", folder / "tokenizer.json"
    with _EXPORT_LOCK:
        folder.mkdir(parents=True, exist_ok=True)
        if not text_path.exists():
            ids = torch.ones(2, 16, dtype=torch.int64)
            core = _TextCore(model.text_encoder.upto(model.target_tap)) if targets_only else \
                _TextCore(model.text_encoder, model.target_tap)
            _export(core.eval(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"],
                    {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}, text_path)
        if not targets_only and not image_path.exists():
            size = model.image_size
            _export(_ImageCore(model.image_encoder).eval(), (torch.zeros(2, size, size, 3, dtype=torch.uint8),), ["pixels"],
                    {"pixels": {0: "batch"}}, image_path)
        if not tok_path.exists():
            with files.atomic_path(tok_path) as tmp:
                fast_tokenizer(model.text_encoder.tokenizer).save(str(tmp))
        if int8_text:
            quant_path = folder / text_graph(targets_only, int8=True)
            if not quant_path.exists():
                from onnxruntime.quantization import QuantType, quantize_dynamic

                with files.atomic_path(quant_path) as tmp:
                    quantize_dynamic(str(text_path), str(tmp), per_channel=True, weight_type=QuantType.QUInt8,
                                     op_types_to_quantize=["MatMul"])
    return folder


def _export(core: nn.Module, args: tuple, names: list[str], dynamic_axes: dict, path: Path) -> None:
    with files.atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns of traced Python conditions and of Slice ops it cannot fold: both
        # harmless for these graphs, whose outputs the tests compare with torch's; a user cannot act on them.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        outputs = ["hidden", "pooled"] + (["tapped"] if getattr(core, "tap", None) is not None else [])
        torch.onnx.export(core, args, str(tmp), input_names=names, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=ONNX_OPSET, dynamo=False)


# ---- one engine per worker ------------------------------------------------------------------------

_ENGINES: dict[tuple, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def get_engine(model: str | Path | SentimentModel = "default", backend: str | None = None,
               device: str | None = None, batch_size: int | None = None) -> Engine:
    """The process's engine for (model, backend, device, batch size), built once. backend: argument,
    else `default_backend`; batch_size: argument, else `default_batch_size`."""
    m = model if isinstance(model, SentimentModel) else load_model(model)
    backend = backend or default_backend(pick_device(device))
    key = (id(m), backend, str(pick_device(device)), batch_size)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = Engine(m, device=device, batch_size=batch_size, backend=backend)
        return _ENGINES[key]
