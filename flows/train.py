"""Prefect wiring for training: build the shipped recipe with `mmsa.recipe.train_default` (the function
`mmsa train` calls, so the nightly retrain builds the model that ships), evaluate the saved model
(mmsa.evaluate), publish the metrics as a markdown artifact. Tasks pass the model folder, never tensors."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

METRICS = ("n", "accuracy", "weighted_f1", "macro_f1", "macro_recall")


@task(name="build-model")
def train_task(out: str, given: dict) -> dict[str, dict]:
    """The recipe into `out`; its own figures, as split -> metrics: MVSA out of fold, SemEval held out, the
    target head out of fold per targeted set."""
    from mmsa import recipe

    config = recipe.train_default(out, **given)
    rows = {"mvsa (out of fold)": config["mvsa_pool_out_of_fold"], "semeval (held out)": config["semeval_heldout"]}
    rows.update({f"target {name} (out of fold)": m for name, m in config.get("target_out_of_fold", {}).items()})
    return rows


@task(name="evaluate-model")
def evaluate_task(data: str, model: str) -> dict:
    from mmsa import evaluate

    return evaluate.evaluate_file(data, model)


def metrics_markdown(out: str, rows: dict[str, dict]) -> str:
    lines = [f"## Model `{out}`", "", "| split | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    for name, m in rows.items():
        cells = (f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "—")) for k in METRICS)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@flow(name="train-model", log_prints=True)
def train_flow(
    out: str,
    mvsa: str | None = None,
    semeval: str | None = None,
    targeted: str | None = None,
    base: str | None = None,
    weight: str | None = None,
    recipe: str | None = None,
    name: str | None = None,
    seed: int | None = None,
    cache_dir: str | None = None,
    eval_data: str | None = None,
) -> dict[str, dict]:
    """Build the shipped recipe into `out` (every other parameter: `mmsa.recipe.train_default`'s, None for its
    default, so the flow never holds a default of its own); optionally evaluate the model on `eval_data`."""
    given = {k: v for k, v in dict(mvsa=mvsa, semeval=semeval, targeted=targeted, base=base, weight=weight,
                                   recipe=recipe, name=name, seed=seed, cache_dir=cache_dir).items() if v is not None}
    rows = train_task(out, given)
    if eval_data:
        rows["eval"] = evaluate_task(eval_data, out)
    markdown = metrics_markdown(out, rows)
    create_markdown_artifact(key="train-metrics", markdown=markdown, description=f"training of {out}")
    print(markdown)
    return rows
