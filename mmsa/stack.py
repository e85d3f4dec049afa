"""Linear heads on pooled features, stacked: the default model's recipe and the candidates `mmsa compare`
cross-validates.

Every head is a standardised multinomial logistic regression whose strength is chosen by an inner
cross-validation on the rows it is fitted on (never on the rows it is judged on). Fusion is stacking: a
small logistic regression over the log-probabilities that the branch heads gave *out of fold*, so it
learns how far to trust each branch on posts those heads did not see. Temperatures are fitted the same
way, on out-of-fold probabilities. A fitted head folds its standardisation into one `nn.Linear`, so the
shipped model (`mmsa.heads.LinearStack`) runs in the same engine as every other head.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from mmsa.schema import LABELS
from mmsa.train import class_weight, holdout_split

# Inverse L2 strengths tried by the inner CVs: branch heads read hundreds of standardised features and want
# strong penalties; the meta head reads a dozen log-probabilities and wants weak ones.
CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
META_CS = (1e-3, 1e-2, 0.1, 1.0, 10.0)
DEFAULT_WEIGHT = "sqrt"  # the general text head's class weighting chosen by `mmsa compare` (results/compare.md)
# The stacking candidates: name -> the branches the meta head reads ("text_general": the general text head
# fitted on SemEval alone, out of sample on MVSA posts).
RECIPES = {
    "stack2": ("text_post", "image_post"),
    "stack4": ("text_post", "image_post", "image_label", "text_general"),
}
DEFAULT_RECIPE = "stack2"  # the best fusion of `mmsa compare` (results/compare.md)
K = len(LABELS)
EPS = 1e-6


def fit_lr(X: np.ndarray, y: np.ndarray, weight: str = "none", inner: int = 3, seed: int = 0, cs=CS) -> Pipeline:
    """Standardise, then a logistic regression whose C the inner stratified CV picks by log-loss."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the weakest Cs of the grid converge slowly; lbfgs' answer is kept
        cv = StratifiedKFold(inner, shuffle=True, random_state=seed)
        lr = LogisticRegressionCV(Cs=list(cs), cv=cv, scoring="neg_log_loss", max_iter=300,
                                  class_weight=class_weight(y, weight), l1_ratios=(0.0,), use_legacy_attributes=False)
        return make_pipeline(StandardScaler(), lr).fit(X, y)


def chosen_c(lr) -> float:
    return float(np.ravel(lr.C_)[0])


def refit(model: Pipeline) -> Pipeline:
    """An unfitted copy of `model` with its chosen C fixed (for out-of-fold predictions)."""
    lr = model[-1]
    return make_pipeline(StandardScaler(), LogisticRegression(C=chosen_c(lr), max_iter=300, class_weight=lr.class_weight))


def out_of_fold(model: Pipeline, X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Probabilities for every row from a copy of `model` fitted on the other folds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(refit(model), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                 method="predict_proba")


def logp(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, EPS, 1.0))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """T minimising the log-loss of softmax(log p / T): one number, so the labels never change."""
    z = np.log(np.clip(p, 1e-300, 1.0))

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-2.0, 2.0), method="bounded").x))


def tempered(p: np.ndarray, t: float) -> np.ndarray:
    s = np.log(np.clip(p, 1e-300, 1.0)) / t  # as the runtime divides logits by t: no clipping at EPS
    s = np.exp(s - s.max(1, keepdims=True))
    return s / s.sum(1, keepdims=True)


def rule_combine(p_text: np.ndarray, p_image: np.ndarray) -> np.ndarray:
    """MVSA's labelling rule on per-modality probabilities: agree -> that label, one neutral -> the other,
    positive against negative -> no post (their mass is dropped, the rest renormalised)."""
    pos, neu, neg = (LABELS.index(x) for x in ("positive", "neutral", "negative"))
    out = np.zeros_like(p_text)
    out[:, pos] = p_text[:, pos] * (p_image[:, pos] + p_image[:, neu]) + p_text[:, neu] * p_image[:, pos]
    out[:, neg] = p_text[:, neg] * (p_image[:, neg] + p_image[:, neu]) + p_text[:, neu] * p_image[:, neg]
    out[:, neu] = p_text[:, neu] * p_image[:, neu]
    out += 1e-12  # a certain conflict leaves no mass: uniform rather than 0/0
    return out / out.sum(1, keepdims=True)


def to_linear(model: Pipeline) -> nn.Linear:
    """The pipeline's standardisation + logistic regression as one nn.Linear giving the same logits."""
    sc, lr = model[0], model[-1]
    if list(lr.classes_) != list(range(K)):
        raise ValueError(f"head saw classes {list(lr.classes_)}, needs all of {list(range(K))}")
    w = lr.coef_ / sc.scale_
    b = lr.intercept_ - w @ sc.mean_
    lin = nn.Linear(w.shape[1], K)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w).float())
        lin.bias.copy_(torch.from_numpy(b).float())
    return lin


@dataclass
class StackFit:
    """A fitted stack: branch heads over pooled features, the meta head over their log-probabilities."""

    branches: dict[str, Pipeline]  # name -> head; "text_*" read the text vector, "image_*" the image vector
    meta: Pipeline
    t_fused: float

    def branch_logp(self, t: np.ndarray, i: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        cols = []
        for name, head in self.branches.items():
            cols.append(logp(extra[name]) if extra and name in extra else logp(head.predict_proba(t if name.startswith("text") else i)))
        return np.concatenate(cols, 1)

    def predict(self, t: np.ndarray, i: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return tempered(self.meta.predict_proba(self.branch_logp(t, i, extra)), self.t_fused)


def branch(x: np.ndarray, target: np.ndarray, seed: int = 0) -> tuple[Pipeline, np.ndarray]:
    """A branch head fitted on all rows, and its out-of-fold probabilities on them (what a meta head learns from)."""
    head = fit_lr(x, target, seed=seed)
    return head, out_of_fold(head, x, target, seed=seed)


def fit_stack(branches: dict[str, tuple[Pipeline, np.ndarray]], y: np.ndarray, seed: int = 0) -> tuple[StackFit, np.ndarray]:
    """A meta head over the branches' out-of-sample probabilities (name -> (head, its probabilities on these
    rows: out of fold, or from a head fitted on other data)) and its temperature, fitted on the meta head's
    own out-of-fold probabilities. Returns the fit and those probabilities, calibrated."""
    z = np.concatenate([logp(p) for _, p in branches.values()], 1)
    meta = fit_lr(z, y, seed=seed, cs=META_CS)
    p_meta = out_of_fold(meta, z, y, seed=seed)
    temp = fit_temperature(p_meta, y)
    return StackFit({n: h for n, (h, _) in branches.items()}, meta, temp), tempered(p_meta, temp)


def build_head(fit: StackFit, general: Pipeline, t_general: float, image: Pipeline, t_image: float, dt: int, di: int):
    """The fitted heads as the runtime module (mmsa.heads.LinearStack) with the same outputs."""
    from mmsa.heads import LinearStack

    module = LinearStack(dt, di, list(fit.branches))
    with torch.no_grad():
        module.general.load_state_dict(to_linear(general).state_dict())
        module.image.load_state_dict(to_linear(image).state_dict())
        for name, head in fit.branches.items():
            module.branches[name].load_state_dict(to_linear(head).state_dict())
        module.meta.load_state_dict(to_linear(fit.meta).state_dict())
        module.temperature.copy_(torch.tensor([t_general, fit.t_fused, t_image]))
    return module.eval()


def pooled_pool(m, mvsa_dir: str | Path, **kw):
    """MVSA train + dev as one PooledSet: the pool that cross-validation splits and the shipped model fits on."""
    from mmsa.features import PooledSet, pooled_features

    parts = [pooled_features(m, Path(mvsa_dir) / f, **kw) for f in ("train.jsonl", "dev.jsonl")]
    return PooledSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in PooledSet.__dataclass_fields__))


def train_model(mvsa_dir: str | Path, semeval: str | Path, out: str | Path, base: str | Path = "default",
                weight: str = DEFAULT_WEIGHT, recipe: str = DEFAULT_RECIPE, name: str | None = None, seed: int = 0,
                extra: dict | None = None, cache_dir: Path | None = None) -> dict:
    """A `recipe` of `mmsa compare` fitted on all of MVSA train+dev and the SemEval training part, over `base`'s
    encoders; writes a model folder and returns its config.

    The general text head (imageless posts, the text branch) learns from the SemEval training part plus
    MVSA's text labels with `weight`ed classes; the image head from MVSA's image labels. A stack's own
    general-text input ("text_general") learns from SemEval alone, so its probabilities on MVSA posts are out
    of sample, as they were in cross-validation.
    """
    from safetensors.torch import save_file

    from mmsa import files
    from mmsa.evaluate import classification_metrics, expected_calibration_error
    from mmsa.features import pooled_features
    from mmsa.model import DEFAULT_LANGUAGES, load_model
    from mmsa.quantify import quantification_stats

    m = load_model(base)
    kw = {} if cache_dir is None else {"cache_dir": cache_dir}
    mv = pooled_pool(m, mvsa_dir, **kw)
    sem = pooled_features(m, semeval, with_images=False, **kw)
    tr, ho = holdout_split(len(sem))
    x, y = np.concatenate([sem.text[tr], mv.text]), np.concatenate([sem.label[tr], mv.text_label])
    general = fit_lr(x, y, weight=weight, seed=seed)
    oof_general = out_of_fold(general, x, y, seed=seed)
    t_general = fit_temperature(oof_general, y)
    image = branch(mv.image, mv.image_label, seed)
    t_image = fit_temperature(image[1], mv.image_label)
    available = {"text_post": lambda: branch(mv.text, mv.label, seed), "image_post": lambda: branch(mv.image, mv.label, seed),
                 "image_label": lambda: image}
    if "text_general" in RECIPES[recipe]:
        g_sem = fit_lr(sem.text[tr], sem.label[tr], weight=weight, seed=seed)
        available["text_general"] = lambda: (g_sem, g_sem.predict_proba(mv.text))
    fit, p_oof = fit_stack({n: available[n]() for n in RECIPES[recipe]}, mv.label, seed)
    module = build_head(fit, general, t_general, image[0], t_image, mv.text.shape[1], mv.image.shape[1])

    p_ho = tempered(general.predict_proba(sem.text[ho]), t_general)
    out = Path(out)
    with files.atomic_path(out / "heads.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, tmp)
    text_layers = m.config.get("text_layers")
    if text_layers and (m.folder / text_layers).resolve() != (out / text_layers).resolve():
        files.copy(m.folder / text_layers, out / text_layers)
    heads = {"general": general, "image": image[0], **fit.branches, "meta": fit.meta}
    config = {
        "name": name or out.name,
        "labels": list(LABELS),
        **{k: m.config[k] for k in ("text_encoder", "image_encoder", "max_length", "image_size")},
        "languages": list(DEFAULT_LANGUAGES),
        "text_layers": text_layers,
        "head": "stack",
        "head_kwargs": {"branches": list(fit.branches)},
        "text_dim": int(mv.text.shape[1]),
        "image_dim": int(mv.image.shape[1]),
        "train_config": {"recipe": recipe, "mvsa": str(mvsa_dir), "semeval": str(semeval), "class_weight": weight,
                         "seed": seed, "n_mvsa": len(mv), "n_semeval_train": len(tr),
                         "C": {n: chosen_c(h[-1]) for n, h in heads.items()},
                         "temperature": {"text": t_general, "fused": fit.t_fused, "image": t_image}},
        "semeval_heldout": {**classification_metrics(sem.label[ho], p_ho.argmax(1)),
                            "ece": expected_calibration_error(p_ho, sem.label[ho])},
        "mvsa_pool_out_of_fold": classification_metrics(mv.label, p_oof.argmax(1)),
        # brand shares while no target head replaces them: the statistics of the post's own text-path probabilities
        "quantification": quantification_stats(tempered(oof_general, t_general), y, seed=seed),
        **(extra or {}),
    }
    files.write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return config
