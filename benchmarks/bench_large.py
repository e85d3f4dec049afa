"""The large tier's text encoder (all-mpnet-base-v2, issue 35) against the default's MiniLM: what a post costs on
CPU, and what frozen mean-pooled vectors of each give a cross-validated linear head.

Run on demand (needs `make install-large`; not part of the test suite):

    nice -n 10 .venv/bin/python benchmarks/bench_large.py [--parts cost,cv] [--posts 320] [--runs 5] \
        [--repeats 3] [--semeval-rows 2000] [--out benchmarks/results/large.md]

cost: the scoring engine (mmsa.infer.Engine, one thread) on the first --posts MVSA-Single dev posts, as text-only
      posts and as posts with their image (decoded beforehand), for the shipped default and for the same model
      with all-mpnet-base-v2 as its text side; torch and onnx backends; CPU seconds of the process (and wall
      time) per post, median of --runs runs, the engines interleaved in every run.
cv:   text-only logistic-regression heads (mmsa.stack.fit_lr) over frozen MiniLM and frozen MPNet vectors:
      5-fold x --repeats CV over MVSA-Single train+dev, and 5-fold CV over a fixed sample of --semeval-rows SemEval
      tweets; features cached as `mmsa compare` caches them (mmsa.features). MPNet encodes about 1.5 tweets a
      second on two shared cores, so the whole of SemEval (49k) and `mmsa compare`'s full candidate list with
      images are left to a machine with more time or a GPU.

"With MPNet" is a probe folder: the default's config with another text encoder and untrained heads of the
right size. Its heads are never judged: the engine's cost does not depend on their weights, and the cv part fits
its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmsa import crossval  # noqa: E402
from mmsa.data import load_image, read_rows, resolve_data_dir  # noqa: E402
from mmsa.encoders import DEFAULT_TEXT_ENCODER, LARGE_TEXT_ENCODER  # noqa: E402
from mmsa.heads import from_config  # noqa: E402
from mmsa.infer import Engine  # noqa: E402
from mmsa.model import load_model, resolve_model_dir  # noqa: E402


def probe(folder: Path, text_encoder: str, dim: int) -> Path:
    """The default's config over `text_encoder` (frozen: no fine-tuned layers) with untrained heads."""
    from safetensors.torch import save_file

    cfg = json.loads((resolve_model_dir("default") / "config.json").read_text())
    cfg = {**cfg, "name": f"probe-{text_encoder}", "text_encoder": text_encoder, "text_layers": None, "text_dim": dim}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in from_config(cfg).state_dict().items()}, str(folder / "heads.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder


def cost(models: dict, posts: int, runs: int) -> dict:
    dev = resolve_data_dir() / "mvsa_single" / "dev.jsonl"
    rows = read_rows(dev)[:posts]
    texts = [r["text"] for r in rows]
    size = load_model("default").image_size
    images = [load_image(dev.parent / r["image"], size) for r in rows]
    kinds = {"text only": [None] * len(texts), "with image": images}
    engines = {(name, backend): Engine(m, backend=backend, threads=1)
               for name, m in models.items() for backend in ("torch", "onnx")}
    # torch's eager EfficientNet is not how a CPU scores images (benchmarks/results/infer.md): onnx only there
    plan = [(name, backend, kind) for name, backend in engines for kind in kinds
            if (backend, kind) != ("torch", "with image")]
    for e in engines.values():  # warm-up: graphs exported and loaded, first-call allocations done
        e.predict(texts[:32], images[:32])
    cpu, wall = ({key: [] for key in plan} for _ in range(2))
    for _ in range(runs):
        for name, backend, kind in plan:
            c0, w0 = time.process_time(), time.perf_counter()
            engines[name, backend].predict(texts, kinds[kind])
            cpu[name, backend, kind].append((time.process_time() - c0) / len(texts) * 1e3)
            wall[name, backend, kind].append((time.perf_counter() - w0) / len(texts) * 1e3)
    tokens = {name: float(np.mean([len(x) for x in next(e for k, e in engines.items() if k[0] == name).tokenize(texts)]))
              for name in models}
    return {"posts": len(texts), "runs": runs, "mean_tokens": tokens,
            "cpu_ms": {" | ".join(k): statistics.median(v) for k, v in cpu.items()},
            "wall_ms": {" | ".join(k): statistics.median(v) for k, v in wall.items()},
            "cpu_ms_runs": {" | ".join(k): v for k, v in cpu.items()}}


def semeval_sample(rows: int | None, folder: Path) -> Path:
    """SemEval's training file, or a fixed random `rows` of it (MPNet encodes all 49k tweets in over an hour on
    two shared cores); the same bytes every run, so the cached features are found again."""
    path = resolve_data_dir() / "semeval2017_4a" / "train.jsonl"
    if not rows:
        return path
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = np.sort(np.random.default_rng(0).choice(len(lines), rows, replace=False))
    out = folder / f"semeval-{rows}.jsonl"
    out.write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
    return out


def cv(models: dict, repeats: int, semeval: Path) -> dict:
    """Text-only logistic-regression heads (mmsa.stack.fit_lr: standardised, strength chosen by an inner CV on the
    training folds) over each encoder's frozen pooled vectors: MVSA post labels under 5-fold x `repeats`, and the
    SemEval sample under 5 folds with the imageless path's class weighting. Per fold: the metrics and, for
    pairing, the fold's index."""
    from mmsa import stack
    from mmsa.evaluate import classification_metrics
    from mmsa.features import pooled_features

    mvsa = resolve_data_dir() / "mvsa_single"
    out = {}
    for name, m in models.items():
        t0 = time.perf_counter()
        mv = stack.pooled_pool(m, mvsa, with_images=False)
        sem = pooled_features(m, semeval, with_images=False)
        encoded = time.perf_counter() - t0
        folds = []
        for tr, te in crossval.repeated_folds(mv.label, 5, repeats):
            head = stack.fit_lr(mv.text[tr], mv.label[tr])
            folds.append(classification_metrics(mv.label[te], head.predict(mv.text[te])))
        sem_folds = []
        for tr, te in crossval.repeated_folds(sem.label, 5, 1):
            head = stack.fit_lr(sem.text[tr], sem.label[tr], weight=stack.DEFAULT_WEIGHT)
            sem_folds.append(classification_metrics(sem.label[te], head.predict(sem.text[te])))
        out[name] = {"mvsa": folds, "semeval": sem_folds, "n_mvsa": len(mv), "n_semeval": len(sem),
                     "encode_seconds": encoded, "seconds": time.perf_counter() - t0}
        print(f"cv {name}: {out[name]['seconds']:.0f}s", flush=True)
    return out


def _pm(xs) -> str:
    return f"{100 * np.mean(xs):.2f} ± {100 * np.std(xs, ddof=1):.2f}"


def _when(part: dict) -> str:
    """How a part was run: its command, its dates and the machine's load around it."""
    return (f"Command: `{part['command']}`; {part['started']} to {part['finished']} UTC; load average (1/5/15 min) "
            f"{part['load_start']} at the start, {part['load_end']} at the end.")


def page(res: dict) -> str:
    lines = [
        "# The large text encoder (all-mpnet-base-v2) against the default's MiniLM",
        "",
        "**What.** What the large tier's text side costs per post on CPU next to the default's, and what its frozen "
        "mean-pooled vectors give cross-validated linear heads: the evidence for issue 35's first "
        "step. No large model is trained yet: these are the encoders' figures, not a shipped model's.",
        "",
        f"**Machine.** {res['machine']}, shared with other developers' training runs; run under `nice -n 10`. "
        "Each section says its command, dates and the load around it. `.venv/bin/python benchmarks/bench_large.py "
        "--merge A.json B.json --out PAGE` writes this page from the parts' JSON.",
        "",
    ]
    if "cost" in res:
        c = res["cost"]
        lines += [
            "## Cost per post, CPU",
            "",
            f"Method: the scoring engine (`mmsa.infer.Engine`) with one thread, on the first {c['posts']} MVSA-Single dev "
            "posts, scored as text-only posts and (onnx, the CPU default) with their images (decoded and resized beforehand); the "
            "process's CPU time per post, median of "
            f"{c['runs']} runs after a warm-up, all engines interleaved in every run. `default`: the shipped model "
            "(MiniLM-L6, 22M parameters, + EfficientNet-Lite2); `mpnet`: the same with all-mpnet-base-v2 (110M) as "
            "the text side. Mean tokens per post: "
            + ", ".join(f"{n} {t:.1f}" for n, t in c["mean_tokens"].items()) + ".",
            "",
            _when(c),
            "",
            "| backend | posts | default CPU ms/post | mpnet CPU ms/post | ratio | default wall ms/post | mpnet wall ms/post |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for backend, kind in (("torch", "text only"), ("onnx", "text only"), ("onnx", "with image")):
            d, m = (c["cpu_ms"][f"{n} | {backend} | {kind}"] for n in ("default", "mpnet"))
            dw, mw = (c["wall_ms"][f"{n} | {backend} | {kind}"] for n in ("default", "mpnet"))
            lines.append(f"| {backend} | {kind} | {d:.1f} | {m:.1f} | {m / d:.1f}x | {dw:.1f} | {mw:.1f} |")
        lines += [""]
    if "cv" in res:
        enc = res["cv"]["encoders"]
        base = enc["minilm"]
        n, k = base["n_mvsa"], 5
        lines += [
            "## Frozen vectors, text-only linear heads",
            "",
            f"Method: a logistic regression on each encoder's frozen mean-pooled text vector (`mmsa.stack.fit_lr`: "
            "standardised, its strength chosen by an inner 3-fold CV on the training folds only), judged on the held-out "
            f"fold: MVSA-Single train+dev post labels (n={n:,}) under 5-fold x {res['cv']['repeats']} repeated "
            f"stratified CV (`mmsa.crossval.repeated_folds`), and {res['cv']['semeval']} (n={base['n_semeval']:,}) "
            "under 5-fold CV with the imageless path's class weighting (sqrt). Both encoders frozen: MiniLM without the "
            "default's SemEval-tuned top layers, so neither has seen these tweets. The text side only: no image, "
            "no fusion, no fine-tuning, so these are not the figures of a model (the default's own CV is in "
            "results/compare.md). The difference is paired per fold, with the Nadeau-Bengio corrected SE.",
            "",
            _when(res["cv"]),
            "",
            "| text encoder | MVSA accuracy | MVSA weighted F1 | MVSA macro F1 | accuracy − MiniLM (± SE) | SemEval macro recall | positive | neutral | negative | macro recall − MiniLM (± SE) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ("minilm", "mpnet"):
            r = enc[name]
            d = np.array([f["accuracy"] - b["accuracy"] for f, b in zip(r["mvsa"], base["mvsa"])])
            ds = np.array([f["macro_recall"] - b["macro_recall"] for f, b in zip(r["semeval"], base["semeval"])])
            ns = r["n_semeval"]
            diff = "—" if name == "minilm" else f"{100 * d.mean():+.2f} ± {100 * crossval.corrected_se(d, n - n / k, n / k):.2f}"
            sdiff = "—" if name == "minilm" else \
                f"{100 * ds.mean():+.2f} ± {100 * crossval.corrected_se(ds, ns - ns / k, ns / k):.2f}"
            recall = {lab: [f["per_class_recall"][lab] for f in r["semeval"]] for lab in ("positive", "neutral", "negative")}
            lines.append(f"| {name} | " + " | ".join(_pm([f[x] for f in r["mvsa"]]) for x in crossval.METRICS)
                         + f" | {diff} | {_pm([f['macro_recall'] for f in r['semeval']])} | "
                         + " | ".join(f"{100 * np.mean(v):.1f}" for v in recall.values()) + f" | {sdiff} |")
        lines += ["", "Means ± sd over folds. Time per encoder (its features encoded, or read from the cache, then "
                  "the heads): " + ", ".join(f"{nm} {r['seconds'] / 60:.0f} min" for nm, r in enc.items()) + "."]
    return "\n".join(lines) + "\n"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="cost,cv")
    ap.add_argument("--posts", type=int, default=320)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--semeval-rows", type=int, default=2000, help="a fixed random sample of SemEval (0: all)")
    ap.add_argument("--merge", nargs="+", default=None, help="write the page from these runs' JSON instead of running")
    ap.add_argument("--out", default=None, help="results page to write (the numbers as JSON beside it)")
    args = ap.parse_args()
    if args.merge:
        res = {}
        for path in args.merge:
            res |= json.loads(Path(path).read_text())
    else:
        res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                          f"torch {torch.__version__}"}
        argv = sys.argv[1:]
        if "--out" in argv:  # where the page went is not part of the method
            del argv[argv.index("--out") : argv.index("--out") + 2]
        command = "nice -n 10 .venv/bin/python benchmarks/bench_large.py " + " ".join(argv)
        with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
            mpnet = load_model(probe(Path(tmp) / "mpnet", LARGE_TEXT_ENCODER, 768))
            if "cost" in args.parts:
                meta = {"command": command, "started": _now(), "load_start": _load()}
                res["cost"] = cost({"default": load_model("default"), "mpnet": mpnet}, args.posts, args.runs)
                res["cost"] |= meta | {"finished": _now(), "load_end": _load()}
            if "cv" in args.parts:
                meta = {"command": command, "started": _now(), "load_start": _load(), "repeats": args.repeats,
                        "semeval": f"a fixed random {args.semeval_rows:,} of the SemEval tweets" if args.semeval_rows
                        else "the SemEval tweets"}
                minilm = load_model(probe(Path(tmp) / "minilm", DEFAULT_TEXT_ENCODER, 384))
                semeval = semeval_sample(args.semeval_rows, Path(tmp))
                # the slow one's features first
                res["cv"] = meta | {"encoders": cv({"mpnet": mpnet, "minilm": minilm}, args.repeats, semeval),
                                    "finished": _now(), "load_end": _load()}
    text = page(res)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        if not args.merge:
            Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
