"""Prefect wiring for training: train a head (mmsa.train), evaluate the saved model (mmsa.evaluate),
publish the metrics as a markdown artifact. Tasks pass the model folder, never tensors."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

METRICS = ("n", "accuracy", "weighted_f1", "macro_f1")


@task(name="train-head")
def train_task(config: dict, data: str, out: str, cache: str | None) -> dict:
    from mmsa import train

    summary = train.run(train.TrainConfig(**config), data, out, cache_dir=Path(cache) if cache else None, progress=False)
    return {k: summary[k] for k in ("dev", "dev_text_only", "dev_image_only")}


@task(name="evaluate-model")
def evaluate_task(data: str, model: str) -> dict:
    from mmsa import evaluate

    return evaluate.evaluate_file(data, model)


def metrics_markdown(out: str, rows: dict[str, dict]) -> str:
    lines = [f"## Model `{out}`", "", "| split | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" if isinstance(m[k], float) else str(m[k]) for k in METRICS) + " |")
    return "\n".join(lines)


@flow(name="train-model", log_prints=True)
def train_flow(
    data: str,
    out: str,
    head: str = "native_combine",
    text_encoder: str = "all-minilm-l6-v2",
    image_encoder: str = "efficientnet-lite2",  # the default model's
    epochs: int = 20,
    batch_size: int = 16,
    finetune_layers: int = 0,
    seed: int = 0,
    cache: str | None = None,
    eval_data: str | None = None,
) -> dict[str, dict]:
    """Train on DATA/train.jsonl (early stopping on folds of it), report on DATA/dev.jsonl, save into `out`;
    optionally evaluate on `eval_data`."""
    config = dict(head=head, text_encoder=text_encoder, image_encoder=image_encoder, epochs=epochs,
                  batch_size=batch_size, finetune_layers=finetune_layers, seed=seed)
    rows = train_task(config, data, out, cache)
    rows = {k: v for k, v in rows.items() if v}
    if eval_data:
        rows["eval"] = evaluate_task(eval_data, out)
    markdown = metrics_markdown(out, rows)
    create_markdown_artifact(key="train-metrics", markdown=markdown, description=f"training of {out}")
    print(markdown)
    return rows
