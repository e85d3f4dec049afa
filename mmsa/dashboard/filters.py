"""The dashboard's filters, from the query string: the ones every view takes (`Filters`) and a view's own
settings (`with_view_settings`); a bad value is a ValueError, which the server answers with 400."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from urllib.parse import urlencode

from mmsa.schema import LABELS


def one(query: dict[str, list[str]], key: str) -> str | None:
    """The last non-blank value of `key`, or None: a key given twice keeps its later value, as a form's does."""
    values = [v.strip() for v in query.get(key, []) if v.strip()]
    return values[-1] if values else None


def _day(query: dict[str, list[str]], key: str) -> str | None:
    value = one(query, key)
    if value is not None:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{key} must be a date YYYY-MM-DD, not {value!r}") from None
    return value


def number(query: dict[str, list[str]], key: str, default: float, low: float, high: float, kind=int):
    """`key` as a `kind` within [low, high], or `default` when it is absent; else a ValueError (a 400)."""
    value = one(query, key)
    if value is None:
        return default
    try:
        parsed = kind(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, not {value!r}") from None
    if not low <= parsed <= high:
        raise ValueError(f"{key} must be between {low} and {high}")
    return parsed


@dataclass(frozen=True)
class Filters:
    """The filters every view takes, from the query string; None = no filter (or the default)."""

    brand: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    source: str | None = None
    lang: str | None = None
    model_version: str | None = None
    period: str | None = None  # 'day', 'week' or None: chosen from the range
    extra: dict = field(default_factory=dict, compare=False)  # a view's own settings (window, label, ...)

    NAMES = ("brand", "date_from", "date_to", "source", "lang", "model_version", "period")

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> Filters:
        period = one(query, "period")
        if period not in (None, "day", "week"):
            raise ValueError(f"period must be day or week, not {period!r}")
        return cls(brand=one(query, "brand"), date_from=_day(query, "date_from"), date_to=_day(query, "date_to"),
                   source=one(query, "source"), lang=one(query, "lang"),
                   model_version=one(query, "model_version"), period=period)

    def query(self, extra: bool = False, **changes: object) -> str:
        """This filter set (with `changes`) as a query string, empty values left out; the view's own
        settings only with `extra` (its CSV links), not in links to other views."""
        values = {name: getattr(self, name) for name in self.NAMES} | (dict(self.extra) if extra else {}) | changes
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})

    def sql(self, names: list[str], model_version: str) -> dict:
        """The bound parameters for a query taking `names`: the filters it knows, the resolved model version."""
        values = {name: getattr(self, name) for name in self.NAMES if name != "model_version"} | dict(self.extra)
        values["model_version"] = self.model_version or model_version
        return {k: v for k, v in values.items() if k in names}


def with_view_settings(name: str, f: Filters, query: dict[str, list[str]]) -> Filters:
    """`f` with the settings of view or table NAME read from the query string (spikes: window and threshold;
    posts and gallery: label and limit)."""
    extra: dict = {}
    if name == "spikes":
        extra = {"window": number(query, "window", 28, 3, 365), "threshold": number(query, "threshold", 3.0, 0.5, 50, float)}
    elif name in ("posts", "gallery"):
        label = one(query, "label")
        if label not in (None, *LABELS):
            raise ValueError(f"label must be one of {', '.join(LABELS)}")
        extra = {"label": label, "limit": number(query, "limit", 50 if name == "posts" else 24, 1, 1000)}
    return replace(f, extra={k: v for k, v in extra.items() if v is not None})
