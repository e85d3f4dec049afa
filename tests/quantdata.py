"""A realistic calibrated classifier for the quantification tests: two features per post whose class-conditional
distributions overlap as real sentiment does (neutral between positive and negative), a logistic regression
trained on a general-tweet mix (40% positive, 44% neutral, 16% negative), and its quantification statistics
from out-of-fold probabilities, as the model's are made."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from mmsa import quantify
from mmsa.schema import LABELS

NEG, NEU, POS = LABELS.index("negative"), LABELS.index("neutral"), LABELS.index("positive")
CENTRES = {POS: (1.2, 0.0), NEU: (0.0, 0.5), NEG: (-1.2, 0.0)}
TRAINING_MIX = {POS: 2000, NEU: 2200, NEG: 800}


def draw(counts: dict[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features and true classes of counts[c] posts of each class c."""
    x = np.concatenate([rng.normal(CENTRES[c], 1.0, size=(n, 2)) for c, n in counts.items()])
    y = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return x, y


def classifier(seed: int = 1) -> tuple[LogisticRegression, dict]:
    """The classifier trained on TRAINING_MIX and its statistics."""
    x, y = draw(TRAINING_MIX, np.random.default_rng(seed))
    oof = cross_val_predict(LogisticRegression(), x, y, cv=5, method="predict_proba")
    return LogisticRegression().fit(x, y), quantify.quantification_stats(oof, y)
