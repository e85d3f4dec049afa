"""The scoring stages, as plain functions over files: prepare -> fetch -> infer -> load.

Each stage reads and writes files under OUT/_work/<dump key>/, so stages can run in different
threads, processes or machines (Prefect tasks pass paths, never tensors), and a rerun of the
same dump picks up where a killed one stopped: a shard whose done-marker exists is not redone.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmsa import faults, files, publish, source, storage, store
from mmsa.options import DEFAULT_SHARD_SIZE, RunParameters
from mmsa.schema import LABELS, SCORED_SCHEMA, NOTHING_TO_READ, UNSCORED_KEEPS, UNSUPPORTED_LANGUAGE

if TYPE_CHECKING:
    from mmsa.images.config import FetchConfig

# One shard's fetch at a time per process: the model waits for the run's first shard, which two fetches at
# once would finish only when both were done, and two would double the downloads per host. A shard's fetch
# still overlaps the model's run on the shard before it.
_FETCHING = threading.Lock()


@dataclass
class RunOptions:
    """What a scoring run needs besides the dump; plain data so it crosses process boundaries."""

    db: str
    out: str
    cache: str | None = None
    model: str = "default"
    shard_size: int | None = None  # None: the size an earlier run cut the dump at, else DEFAULT_SHARD_SIZE
    allow_local_files: bool = False
    allow_hosts: tuple[str, ...] = ()
    force: bool = False
    retry_failed: bool = False
    backend: str | None = None  # inference backend (mmsa.options.BACKENDS); None = mmsa.infer.default_backend
    reading: source.ReadOptions = field(default_factory=source.ReadOptions)  # formats, mapping, brands, image cap
    # How to fetch (timeouts, caps, concurrency); None: FetchConfig's defaults. The image size and the
    # address policy always come from the model and the fields above.
    fetch: FetchConfig | None = None

    @classmethod
    def build(cls, params: RunParameters) -> RunOptions:
        """From a run's parameters; a mistake in how to read the dump is a ValueError said before any work."""
        if params.shard_size is not None and params.shard_size < 1:  # before a work folder records it
            raise ValueError(f"--shard-size must be at least 1, got {params.shard_size}")
        if storage.is_remote(params.db) or source.is_url(params.db):  # DuckDB writes a local file, beside its lock
            raise ValueError(f"--db {params.db}: the database is a local file; --out and --cache may be object storage")
        return cls(
            db=params.db, out=_absolute(params.out), cache=_absolute(params.cache), shard_size=params.shard_size,
            model=_absolute(params.model) if (Path(params.model) / "config.json").is_file() else params.model,
            allow_local_files=params.allow_local_files, allow_hosts=tuple(params.allow_hosts or ()),
            force=params.force, retry_failed=params.retry_failed, backend=params.backend,
            reading=source.ReadOptions.build(params.source_format, params.mapping, params.brands, params.max_images),
            fetch=_fetch_settings(params),
        )

    @property
    def cache_dir(self) -> Path:  # a local folder, or an fsspec URL's UPath (mmsa.storage)
        return storage.path(self.cache) if self.cache else storage.path(self.out) / "_cache"


def _absolute(location: str | None) -> str | None:
    """A local folder as an absolute path: Dask workers started in another folder read and write it too."""
    if location is None or storage.is_remote(location) or source.is_url(location):
        return location
    return str(storage.path(location).absolute())


@dataclass
class Prepared:
    dump: str
    files_key: str  # the dump's bytes (source.files_key): a rerun of them replaces its rejections (load_rejected),
    head: str  # as does a rerun of its path that starts with the same post (a dump still being written); "": no post, < 3 rejections
    key: str
    workdir: str
    shards: list[str]
    rejections: list[str]  # files of the shards' rejected rows (JSON lists), for the load
    posts_in: int
    rejected: int
    not_posts: dict[str, int] = field(default_factory=dict)  # records that are not posts, by reason


@dataclass
class ShardResult:
    index: int
    files: list[str]  # its Parquet files, relative to the output folder (date=DAY/NAME.parquet): the folder may move
    posts: int
    image_status: dict[str, int]
    seconds: dict[str, float]
    skipped: bool = False
    cache_repaired: int = 0  # damaged image cache entries met, removed and fetched anew (mmsa.images.cache.ImageCache)
    not_covered: dict[str, int] = field(default_factory=dict)  # posts left unscored, by language
    nothing_to_read: int = 0  # posts left unscored: no text, no usable image
    scored_by: str | None = None  # the run that scored it (its rows' run_id); None in markers written before


@dataclass
class RunSummary:
    run_id: str
    dump: str
    model_version: str
    posts_in: int
    posts_scored: int  # the posts it stored (loaded): a rerun stores none of the shards an earlier run loaded
    posts_rejected: int
    shards_done: int
    shards_skipped: int
    image_status: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shards: list[dict] = field(default_factory=list)  # per shard: the rows of table run_shards
    not_posts: dict[str, int] = field(default_factory=dict)  # records skipped as not posts, by reason
    cache_repaired: int = 0  # damaged image cache entries this run removed and fetched anew
    not_covered: dict[str, int] = field(default_factory=dict)  # of those stored, posts in languages the model does not cover
    nothing_to_read: int = 0  # of those stored, posts without text whose images all failed: stored unscored

    def markdown(self) -> str:
        """The run's statistics as markdown tables (run totals, then one row per shard)."""
        mix = ", ".join(f"{k}={v}" for k, v in sorted(self.image_status.items())) or "none"
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in self.stage_seconds.items())
        fresh = sum(sh["posts"] for sh in self.shards if not sh["skipped"])
        total = self.stage_seconds.get("total")
        rate = f"{fresh / total:.1f}" if total and fresh else "-"  # posts this run scored, per wall-clock second
        lines = [
            f"## Scoring run `{self.run_id}`", "",
            "| dump | model | posts in | stored | rejected | shards scored | shards skipped | posts/s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {self.dump} | {self.model_version} | {self.posts_in} | {self.scored_line()} | {self.posts_rejected} "
            f"| {self.shards_done} | {self.shards_skipped} | {rate} |", "",
            f"Images: {mix}. Damaged cache entries repaired: {self.cache_repaired}. Stages: {secs}. "
            f"Bound by: {self.bound_by()}.",
            "Records that were not posts: " + (", ".join(f"{k} {v}" for k, v in sorted(self.not_posts.items())) or "none") + ".",
            self.languages_line(),
            "",
            "| shard | skipped | posts | images | fetch s | infer s | write s | posts/s |",
            "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for sh in self.shards:
            sec = sh["stage_seconds"]
            shard_mix = ", ".join(f"{k}={v}" for k, v in sorted(sh["image_status"].items()))
            lines.append(
                f"| {sh['shard']} | {'yes' if sh['skipped'] else 'no'} | {sh['posts']} | {shard_mix} "
                + " ".join(f"| {sec.get(k, 0):.2f}" for k in ("fetch", "infer", "write"))
                + f" | {sh['posts_per_s'] or '-'} |"
            )
        return "\n".join(lines)

    def describe(self) -> str:
        mix = ", ".join(f"{k}={v}" for k, v in sorted(self.image_status.items())) or "none"
        secs = ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items())
        skipped = sum(self.not_posts.values())
        not_posts = f", {skipped} records not posts ({', '.join(f'{k} {v}' for k, v in sorted(self.not_posts.items()))})"
        return (
            f"run {self.run_id}: {self.posts_in} rows in, {self.scored_line()}, {self.posts_rejected} rejected"
            f"{not_posts if skipped else ''} ({self.shards_done} shards scored, {self.shards_skipped} already done)\n"
            f"model {self.model_version}; images: {mix}"
            f"{f'; {self.cache_repaired} damaged cache entries repaired' if self.cache_repaired else ''}\n"
            f"stages: {secs}; bound by {self.bound_by()}\n{self.languages_line()}"
        )

    @property
    def posts_unscored(self) -> int:
        """Of the posts stored, those without a label: a language the model does not cover, or nothing to read."""
        return sum(self.not_covered.values()) + self.nothing_to_read

    def scored_line(self) -> str:
        """The posts stored, scored or not, and those an earlier run had stored: "12 scored", "9 scored + 3 stored
        unscored", "0 scored, 12 already stored"."""
        unscored, before = self.posts_unscored, self.posts_in - self.posts_rejected - self.posts_scored
        return (f"{self.posts_scored - unscored} scored" + (f" + {unscored} stored unscored" if unscored else "")
                + (f", {before} already stored" if before else ""))

    def languages_line(self) -> str:
        """The posts stored unscored because the model does not cover their language, most first; a run that stored
        none says so (an empty nightly dump passed for a good night)."""
        if not self.posts_scored:
            return ("The dump holds no record: nothing was stored." if not self.posts_in and not self.not_posts
                    else "No post was stored by this run.")
        if not self.not_covered:
            return "Every post is in a language the model covers."
        by_count = sorted(self.not_covered.items(), key=lambda kv: (-kv[1], kv[0]))
        return (f"{sum(self.not_covered.values()):,} posts in {len(by_count)} languages not covered (stored unscored): "
                + ", ".join(f"{lang} {n:,}" for lang, n in by_count))

    def bound_by(self) -> str:
        """The stage that took the most seconds (stages overlap across shards; totals don't add up)."""
        stages = {k: v for k, v in self.stage_seconds.items() if k in ("read", "fetch", "infer", "write", "load")}
        return max(stages, key=stages.get) if stages else "-"


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def prepare(dump: str, opts: RunOptions) -> Prepared:
    """Read and validate the dump (its files, as one) and cut it into shard files; each shard's rejected rows go to
    a file of their own beside them. The work folder is keyed by the files' bytes and by how they are read. A dump
    downloaded to be read (an URL, a bucket's files) is removed once cut."""
    out = storage.path(opts.out)  # a local folder, or a bucket's prefix (mmsa.storage)
    with files.scratch(out / "_work" if isinstance(out, Path) else None) as downloads:
        paths = source.resolve(dump, downloads)
        files_key = source.files_key(paths)
        key = source.content_key(files_key, opts.reading)
        workdir = out / "_work" / key
        if isinstance(out, Path):  # object storage has no temporary files: an upload appears whole or not at all
            files.sweep_stale(workdir / "shards", workdir / "rejected", *workdir.glob("done/*"), *out.glob("date=*"))
        shard_size = _shard_size(workdir, opts.shard_size)
        shards, rejections, rejected, first_rejected = [], [], 0, []
        posts_in, not_posts, first = 0, Counter(), None
        for shard in source.iter_shards(paths, shard_size, dump_name=str(dump), options=opts.reading):
            if first is None and shard.posts.num_rows:  # a dump that grows keeps its first post
                first = shard.posts["post_id"][0].as_py()
            path = workdir / "shards" / f"shard-{shard.index:05d}.parquet"
            shards.append(str(store.write_atomic(shard.posts, path)))
            if shard.rejected:  # written as they come: a dump read the wrong way rejects every record
                name = workdir / "rejected" / f"shard-{shard.index:05d}.json"
                rejections.append(str(storage.write_text(name, json.dumps(shard.rejected))))
                rejected += len(shard.rejected)
                first_rejected += [r["raw"] for r in shard.rejected[: 3 - len(first_rejected)]]
            not_posts.update(shard.skipped)
            posts_in += shard.posts.num_rows + len(shard.rejected)
    if first is None and rejected >= 3:  # no post, several rejections: a dump of its own, told by its first
        first = first_rejected  # three records (the first alone may be a header every night has)
    head = "" if first is None else hashlib.sha256(repr(first).encode()).hexdigest()[:16]  # "": a half line, a damaged file
    return Prepared(str(dump), files_key, head, key, str(workdir), shards, rejections, posts_in, rejected, dict(not_posts))


def _shard_size(workdir: Path, requested: int | None) -> int:
    """The size to cut the dump at: shards (and their done markers and file names) are only valid for the
    size they were cut at, so a rerun keeps an earlier run's size, and refuses to change it."""
    manifest = workdir / "manifest.json"
    if manifest.exists():
        earlier = json.loads(manifest.read_text())["shard_size"]
        if requested not in (None, earlier):
            raise ValueError(
                f"this dump was cut into shards of {earlier} posts by an earlier run (see {workdir}); "
                f"rerun with --shard-size {earlier}, or without --shard-size"
            )
        return earlier
    size = DEFAULT_SHARD_SIZE if requested is None else requested
    storage.write_text(manifest, json.dumps({"shard_size": size}))
    return size


def _done_marker(shard_path: str, model_version: str) -> Path:
    shard = storage.path(shard_path)
    return shard.parent.parent / "done" / model_version / f"{shard.stem}.json"


def _fetch_settings(params: RunParameters) -> FetchConfig | None:
    """The run's fetch settings that its parameters set: image worker processes, GPU decoding; None: defaults."""
    from mmsa.images.config import FetchConfig

    if params.fetch_processes == 0 and not params.gpu_decode:
        return None
    return FetchConfig(processes=params.fetch_processes, gpu_decode=params.gpu_decode)


def _fetch_config(opts: RunOptions, image_size: int) -> FetchConfig:
    from mmsa.images.config import FetchConfig

    return replace(opts.fetch or FetchConfig(), image_size=image_size, allow_hosts=tuple(opts.allow_hosts),
                   allow_local_files=opts.allow_local_files)


def score_shard(shard_path: str, opts: RunOptions, run_id: str, key: str) -> ShardResult:
    """Fetch the shard's images, run the model, write the shard's Parquet partitions, mark it done.

    The model takes one row per (post, image), a post without images one text-only row; `combine` then
    makes one prediction per post from its rows. The images are fetched in the order the model takes the
    rows, and the model starts on its first batches while the rest download, so that it is not idle for
    the run's first fetch."""
    from mmsa.images.cache import ImageCache
    from mmsa.images.fetch import fetch_images
    from mmsa.images.status import RETRYABLE
    from mmsa.infer import get_engine
    from mmsa.model import load_model

    model = load_model(opts.model)
    marker = _done_marker(shard_path, model.version)
    index = int(storage.path(shard_path).stem.split("-")[1])
    if marker.exists() and not opts.force:
        done = json.loads(marker.read_text())
        kept = all(storage.path(opts.out).joinpath(f).exists() for f in done["result"]["files"])
        if kept and not (opts.retry_failed and done.get("retryable", 0)):  # a deleted file is written again
            return ShardResult(**{**done["result"], "skipped": True})

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    posts = storage.read_table(shard_path)
    post_texts, post_ids = posts["text"].to_pylist(), posts["post_id"].to_pylist()
    reasons = unscored_reasons(posts["lang"].to_pylist(), model.languages)
    rows = model_rows(posts["image_urls"].to_pylist(), [r is None for r in reasons])
    texts = [post_texts[p] for p, _, _ in rows]
    spans = brand_spans(post_texts, posts["brands"].to_pylist(), opts.reading.brand_rules)
    targets = [[sp for sp in spans[p] if sp] if k == 0 else [] for p, k, _ in rows]  # a post's first row only
    engine = get_engine(model, opts.backend)
    order = engine.order(texts)
    items = [(post_ids[p], url) for p, _, url in rows]
    arrivals = _Arrivals(len(items))
    with ThreadPoolExecutor(1, thread_name_prefix="mmsa-shard-infer") as infer:
        with _FETCHING:
            t1 = time.perf_counter()
            # Submitted only now, behind the other shard's fetch: the model then takes the shards in the
            # order they are fetched, not this one's rows first while their images wait on the other's.
            predicting = infer.submit(engine.predict, texts, arrivals, None, targets)
            try:
                fetch_images([items[i] for i in order], _fetch_config(opts, model.image_size), ImageCache(opts.cache_dir),
                             retry_failed=opts.retry_failed, keep_images=True,
                             on_result=lambda j, result: arrivals.put(int(order[j]), result))
            except BaseException as exc:
                arrivals.fail(exc)
                raise
        t2 = time.perf_counter()
        pred = predicting.result()
    t3 = time.perf_counter()
    fetched = arrivals.results
    seconds["fetch_wait"] = t1 - t0  # reading the shard + waiting for the other shard's fetch
    seconds["fetch"] = t2 - t1
    seconds["infer_wait"] = pred.queued_s + arrivals.waited  # the other shard's batches, this one's images
    seconds["infer"] = t3 - t1 - seconds["infer_wait"]

    statuses, post_pred, images = combine(posts.num_rows, rows, [r.status for r in fetched], pred)
    # An image-only post none of whose images came is not guessed at (the model would read an empty text).
    reasons = [NOTHING_TO_READ if r is None and post_texts[p] is None and statuses[p] != "ok" else r
               for p, r in enumerate(reasons)]
    table = scored_table(posts, statuses, post_pred, model.version, run_id, images,
                         toward_brands(post_pred, rows, pred.target_probs, spans), reasons)
    written = store.write_partitions(table, storage.path(opts.out), f"{model.version}-{key}-{index:05d}")
    seconds["write"] = time.perf_counter() - t3

    not_covered = Counter(lang for lang, r in zip(posts["lang"].to_pylist(), reasons) if r == UNSUPPORTED_LANGUAGE)
    result = ShardResult(index, [f"{f.parent.name}/{f.name}" for f in written], posts.num_rows,
                         dict(Counter(s for s in statuses if s is not None)), seconds,
                         cache_repaired=len({r.url for r in fetched if r.cache_repaired}), not_covered=dict(not_covered),
                         nothing_to_read=reasons.count(NOTHING_TO_READ), scored_by=run_id)
    retryable = sum(1 for r in fetched if r.status in RETRYABLE)
    storage.write_text(marker, json.dumps({"result": asdict(result), "retryable": retryable}))
    return result


def unscored_reasons(langs: list[str | None], covered: frozenset[str]) -> list[str | None]:
    """Per post, why it is not scored, or None to score it: a post in a language the model does not cover
    is not guessed at. One without a language (no letters in its text: emoji, links, or an image alone) is
    scored, as the model reads emoji (spelled out as their names: mmsa.encoders.spell_emoji) and pictures
    whatever the language."""
    return [UNSUPPORTED_LANGUAGE if lang is not None and lang not in covered else None for lang in langs]


def brand_spans(texts: list[str | None], brands: list[list[str] | None], rules: dict | None) -> list[list[list]]:
    """Per post, per brand it names, where the text names it: by the brands file's rules, else (a brand from the
    dump's own field) by the brand's name; an empty list where the text does not name it."""
    from mmsa.brands import BrandTagger, spans

    tagger = BrandTagger(rules) if rules else None
    return [[spans(t, b, tagger) for b in names or []] for t, names in zip(texts, brands)]


def toward_brands(pred, rows: list[tuple[int, int, str | None]], target_probs: list[np.ndarray] | None,
                  spans: list[list[list]]) -> list[np.ndarray] | None:
    """Per post, (brands, 3) probabilities toward each brand it names; None where the model has no target head.

    A brand the text names gets the target head's sentiment toward it, read from the text: the post's image moves the
    post's label, not a brand's (no labelled data toward a target with its image is there to learn or check how; the
    post's fused / text ratio turns clear praise of a brand negative: the model card). A brand the text does not name
    (from the dump's own field) gets the post's own."""
    if target_probs is None:
        return None
    first = {p: r for r, (p, k, _) in enumerate(rows) if k == 0}
    out = []
    for p, post_spans in enumerate(spans):
        probs = np.repeat(pred.probs[p][None], len(post_spans), 0)
        named = [k for k, sp in enumerate(post_spans) if sp]
        if named and p in first:
            probs[named] = target_probs[first[p]]
        out.append(probs)
    return out


def model_rows(image_urls: list[list[str] | None], scored: list[bool] | None = None) -> list[tuple[int, int, str | None]]:
    """(post, image position, url) per model row: one per image of a post, one (url None) for a post
    without images; none for a post that `scored` leaves out (its images are not fetched either)."""
    return [(p, k, url) for p, urls in enumerate(image_urls) if scored is None or scored[p]
            for k, url in enumerate(urls or [None])]


def combine(n_posts: int, rows: list[tuple[int, int, str | None]], statuses: list[str], pred) -> tuple:
    """One prediction per post from its model rows: (post statuses, Prediction per post, images per post).

    A post's image side is the mean of the image branch's probabilities over its usable images, and its
    fused prediction the mean of the fused probabilities of its rows with a usable image (each the text
    with one picture); without a usable image, the text alone. Its status is ok when any image was
    usable, no_image without images, else its first image's failure. A post without rows (not scored) has
    status None, NaN probabilities and no images."""
    from mmsa.model import Prediction

    fused, text, image = (np.asarray(a, dtype=np.float64) for a in (pred.probs, pred.text_probs, pred.image_probs))
    by_post: list[list[int]] = [[] for _ in range(n_posts)]
    for r, (p, _, _) in enumerate(rows):
        by_post[p].append(r)
    probs = np.full((n_posts, 3), np.nan)
    text_probs = np.full((n_posts, 3), np.nan)
    image_probs = np.full((n_posts, 3), np.nan)
    post_status: list[str | None] = []
    images: list[list[dict]] = []
    for p, members in enumerate(by_post):
        if not members:
            post_status.append(None)
            images.append([])
            continue
        usable = [r for r in members if statuses[r] == "ok" and not np.isnan(image[r]).any()]
        text_probs[p] = text[members[0]]
        probs[p] = fused[usable].mean(axis=0) if usable else fused[members[0]]
        if usable:
            image_probs[p] = image[usable].mean(axis=0)
        first = statuses[members[0]]
        post_status.append("ok" if usable else first)
        images.append([
            {"position": rows[r][1], "image_url": rows[r][2], "image_status": statuses[r],
             **_prob_columns("image_", image[r:r + 1], scalar=True)}
            for r in members if rows[r][2] is not None
        ])
    return post_status, Prediction(probs, text_probs, image_probs, getattr(pred, "queued_s", 0.0)), images


class _Arrivals(Sequence):
    """A shard's images by row, as its fetch delivers them: reading one that has not arrived yet waits
    for it (`waited`: seconds spent so), or raises if the fetch failed."""

    def __init__(self, n: int):
        self.results: list = [None] * n  # FetchResults, complete once the fetch returned
        self.waited = 0.0
        self._failure: BaseException | None = None
        self._arrived = threading.Condition()

    def put(self, row: int, result) -> None:
        with self._arrived:
            self.results[row] = result
            self._arrived.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._arrived:
            self._failure = exc
            self._arrived.notify_all()

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, row: int) -> np.ndarray | None:
        result = self.results[row]
        if result is None:
            start = time.perf_counter()
            with self._arrived:
                while (result := self.results[row]) is None:
                    if self._failure is not None:
                        raise RuntimeError("the shard's image fetch failed") from self._failure
                    self._arrived.wait()
            self.waited += time.perf_counter() - start
        return result.image


def _labels(probs: np.ndarray) -> list[str | None]:
    return [None if np.isnan(row).any() else LABELS[int(row.argmax())] for row in probs]


def _prob_columns(prefix: str, probs: np.ndarray, scalar: bool = False) -> dict[str, list]:
    """{prefix}label and {prefix}p_* columns; with scalar, the values of probs' single row."""
    cols = {f"{prefix}label": _labels(probs)}
    for i, name in enumerate(LABELS):
        cols[f"{prefix}p_{name}"] = [None if np.isnan(v) else float(v) for v in probs[:, i]]
    return {k: v[0] for k, v in cols.items()} if scalar else cols


def _brand_scores(brands: list[list[str] | None], probs: list[np.ndarray]) -> list[list[dict]]:
    """Per post, one brand_scores entry per brand it names, from that brand's (3,) probabilities."""
    return [[{"brand": b, **_prob_columns("brand_", probs[p][k:k + 1], scalar=True)} for k, b in enumerate(names or [])]
            for p, names in enumerate(brands)]


def scored_table(posts: pa.Table, statuses: list[str | None], pred, model_version: str, run_id: str,
                 images: list[list[dict]] | None = None, brand_probs: list[np.ndarray] | None = None,
                 reasons: list[str | None] | None = None) -> pa.Table:
    """Join posts, their image statuses, predictions and per-image rows (`combine`) into rows of
    SCORED_SCHEMA; images None: no per-image rows; brand_probs: per post, (brands, 3) probabilities toward
    each brand it names (None: the post's own). A post with a reason (`unscored_reasons`) is stored with
    it and NULL in every prediction column (all but UNSCORED_KEEPS, so a column added later is covered)."""
    probs = np.asarray(pred.probs, dtype=np.float64)
    cols = {name: posts[name] for name in posts.column_names}
    cols["image_status"] = statuses
    cols.update(_prob_columns("", probs))
    score = probs[:, 0] - probs[:, 2]
    cols["sentiment_score"] = [None if np.isnan(v) else float(v) for v in score]
    cols.update(_prob_columns("text_", np.asarray(pred.text_probs, dtype=np.float64)))
    cols.update(_prob_columns("image_", np.asarray(pred.image_probs, dtype=np.float64)))
    n = posts.num_rows
    cols["images"] = images if images is not None else [[] for _ in range(n)]
    cols["brand_scores"] = _brand_scores(posts["brands"].to_pylist(), brand_probs if brand_probs is not None else
                                         [np.repeat(probs[p:p + 1], len(b or []), 0) for p, b in enumerate(posts["brands"].to_pylist())])
    cols["model_version"] = [model_version] * n
    cols["run_id"] = [run_id] * n
    cols["scored_at"] = pa.array([store.now_utc()] * n, type=pa.timestamp("us", tz="UTC"))
    cols["unscored_reason"] = reasons if reasons is not None else [None] * n
    table = pa.table({name: cols[name] for name in SCORED_SCHEMA.names}, schema=SCORED_SCHEMA)
    if not any(cols["unscored_reason"]):
        return table
    scored = pa.array([r is None for r in cols["unscored_reason"]])
    for i, f in enumerate(SCORED_SCHEMA):
        if f.name not in UNSCORED_KEEPS:
            table = table.set_column(i, f, pc.if_else(scored, table[f.name], pa.nulls(n, f.type)))
    return table


def _quantification(model: str) -> dict | None:
    """The model's quantification statistics (config.json), which the brand_prevalence report estimates with."""
    from mmsa.model import load_model

    return load_model(model).config.get("quantification")


def _scored_by(out, r: ShardResult) -> dict[str, str | None]:
    """{file: the run that wrote it} of a shard: its marker's run, else (a marker from before they named it) each
    file's rows' (None for a file pruned empty: nothing to load either way)."""
    if r.scored_by:
        return dict.fromkeys(r.files, r.scored_by)
    runs = {f: storage.read_table(out / f, columns=["run_id"])["run_id"] for f in r.files}
    return {f: run[0].as_py() if len(run) else None for f, run in runs.items()}


def load(prepared: Prepared, results: list[ShardResult], opts: RunOptions, run_id: str, model_version: str,
         started_at, stage_seconds: dict[str, float]) -> RunSummary:
    """Upsert the rows of the shards this run scored, and of those it skipped that no load has taken yet (a run
    stopped before its load), and the rejected rows into DuckDB, and record the run. A shard loaded before is not
    loaded again: a rerun of an older dump would put back its versions of posts a newer dump has since changed."""
    t0 = time.perf_counter()
    con = store.connect(opts.db)
    try:
        out = storage.path(opts.out)
        writers = {f: by for r in results if r.skipped for f, by in _scored_by(out, r).items()}
        waiting = store.not_loaded(con, writers)
        loads = [r for r in results if not r.skipped or waiting.intersection(r.files)]
        stored = {f: writers.get(f, r.scored_by) for r in loads for f in r.files}
        store.prune_partitions(con, out, list(stored), model_version)  # before the load: killed in between, the rerun prunes again
        with store.transaction(con):  # posts, rejections and the run's record appear together
            scored = store.load_scored(con, [out / f for f in stored])
            store.mark_loaded(con, stored)
            batches = (json.loads(storage.path(f).read_text()) for f in prepared.rejections)  # one shard's at a time
            store.load_rejected(con, batches, prepared.dump, prepared.files_key, prepared.head, run_id)
            status, not_covered = Counter(), Counter()
            for r in loads:  # the posts this run stored, as posts_scored counts them: summed over runs, none twice
                status.update(r.image_status)
                not_covered.update(r.not_covered)
            shards = []
            for r in results:  # a skipped shard's seconds belong to the run that scored it
                seconds = {} if r.skipped else {k: round(v, 3) for k, v in r.seconds.items()}
                for k, v in seconds.items():
                    stage_seconds[k] = stage_seconds.get(k, 0.0) + v
                busy = sum(seconds.values())
                shards.append({"run_id": run_id, "shard": r.index, "skipped": r.skipped, "posts": r.posts,
                               "image_status": r.image_status, "stage_seconds": seconds,
                               "posts_per_s": round(r.posts / busy, 2) if busy else None})
            stage_seconds["load"] = time.perf_counter() - t0
            stage_seconds["total"] = (store.now_utc() - started_at).total_seconds()  # wall clock, start to load
            summary = RunSummary(
                run_id=run_id,
                dump=prepared.dump,
                model_version=model_version,
                posts_in=prepared.posts_in,
                posts_scored=scored,
                posts_rejected=prepared.rejected,
                shards_done=sum(not r.skipped for r in results),
                shards_skipped=sum(r.skipped for r in results),
                image_status=dict(status),
                stage_seconds={k: round(v, 3) for k, v in stage_seconds.items()},
                shards=shards,
                not_posts=dict(prepared.not_posts),
                cache_repaired=sum(r.cache_repaired for r in results if not r.skipped),
                not_covered=dict(not_covered),
                nothing_to_read=sum(r.nothing_to_read for r in loads),
            )
            store.record_run(
                con,
                {
                    "run_id": run_id,
                    "dump": prepared.dump,
                    "dump_key": prepared.files_key,
                    "reading_key": source.reading_key(opts.reading),
                    "model_version": model_version,
                    "started_at": started_at,
                    "finished_at": store.now_utc(),
                    "posts_in": summary.posts_in,
                    "posts_scored": summary.posts_scored,
                    "posts_rejected": summary.posts_rejected,
                    "image_status": summary.image_status,
                    "stage_seconds": summary.stage_seconds,
                    "not_posts": summary.not_posts,
                    "cache_repaired": summary.cache_repaired,
                    "not_covered": summary.not_covered,
                    "posts_unscored": summary.posts_unscored,
                },
                shards,
            )
            store.record_model(con, model_version, _quantification(opts.model))
        try:
            publish.publish_snapshot(opts.db, con)  # analysts read the snapshot, never the live file
        except Exception as exc:
            permanent = faults.as_permanent(exc, publish.snapshot_path(opts.db))
            if permanent is None:
                raise
            raise NotPublished(f"{permanent}; the run's {summary.posts_scored} posts are stored in {opts.db}, the "
                               "analysts' snapshot is from before it: the next run publishes it") from exc
    finally:
        con.close()
    return summary


class NotPublished(faults.PermanentError):
    """The load committed and the analysts' snapshot could not be copied: nothing is left to load."""

