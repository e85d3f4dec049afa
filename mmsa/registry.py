"""Model folders by name, and their config, without loading weights or importing torch (so that
`mmsa fetch` can preprocess images at a model's size without paying for the model's imports)."""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


def resolve_model_dir(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if (p / "config.json").exists():
        return p.resolve()
    named = MODELS_DIR / str(name_or_path)
    if (named / "config.json").exists():
        return named
    raise FileNotFoundError(f"no model folder {name_or_path!r} (looked in . and {MODELS_DIR})")


def model_config(name_or_path: str | Path = "default") -> dict:
    """A model folder's config.json."""
    return json.loads((resolve_model_dir(name_or_path) / "config.json").read_text())
