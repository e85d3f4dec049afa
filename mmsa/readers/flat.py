"""The flat contract (one post per row, the project's own fields), and field mappings onto it."""

from __future__ import annotations

from collections.abc import Iterator

from mmsa.readers.common import Skip

# Fields a mapping may fill: the flat contract's own.
TARGETS = ("post_id", "created_at", "text", "image_urls", "image_url", "brand", "source", "lang", "author",
           "likes", "shares", "replies")


def read(record: dict) -> Iterator[dict | Skip]:
    yield record


def parse_path(path: str) -> list[str | int | None]:
    """`media[].url` -> ["media", None, "url"]: names, list indexes, and None for "every element"."""
    steps: list[str | int | None] = []
    for part in path.strip().split("."):
        name, *indexes = part.split("[")
        if name:
            steps.append(name)
        for index in indexes:
            index = index.rstrip("]").strip()
            steps.append(None if index == "" else int(index))
    if not steps:
        raise ValueError(f"empty field path {path!r}")
    return steps


def lookup(value: object, steps: list[str | int | None]) -> object:
    """The value at a parsed path; a list of values below a `[]` step; None where it is missing."""
    for i, step in enumerate(steps):
        if step is None:
            if not isinstance(value, list):
                return None
            found = [lookup(item, steps[i + 1:]) for item in value]
            flat = [v for item in found for v in (item if isinstance(item, list) else [item])]
            return [v for v in flat if v is not None]
        if isinstance(step, int):
            value = value[step] if isinstance(value, list) and -len(value) <= step < len(value) else None
        else:
            value = value.get(step) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def parse_mapping(pairs: dict[str, str]) -> dict[str, list]:
    """{target: parsed path} from {target: path} (the command line's --map and --map-file, mmsa.cli._mapping)."""
    unknown = sorted(set(pairs) - set(TARGETS))
    if unknown:
        raise ValueError(f"cannot map onto {', '.join(unknown)}: the fields are {', '.join(TARGETS)}")
    return {target: parse_path(str(path)) for target, path in pairs.items()}


def mapped(mapping: dict[str, list]):
    """A reader that fills the mapped fields from their paths; the record's other keys pass through
    unchanged (so fields already named as the contract names them need no mapping). A mapped value leaves the
    record, and only it: `user.name` keeps the rest of `user`; a path through a list keeps the list whole. A
    path of names is also a column's own name when a record has it: CSVs flattened from JSON (twarc, pandas)
    name them `user.name`."""
    dotted = {target: ".".join(steps) for target, steps in mapping.items()
              if len(steps) > 1 and all(isinstance(step, str) for step in steps)}
    taken = [steps for steps in mapping.values() if all(isinstance(step, str) for step in steps)]

    def read_mapped(record: dict) -> Iterator[dict | Skip]:
        row = {k: v for k, v in record.items() if k not in mapping}
        for steps in taken:
            row = _without(row, steps)
        for target, steps in mapping.items():
            name = dotted.get(target)
            row[target] = record[name] if name in record else lookup(record, steps)
        yield row

    return read_mapped


def _without(value: dict, names: list[str]) -> dict:
    """`value` without the field at the path of `names` (its own dotted name too), and without the objects that
    leaves empty."""
    value = {k: v for k, v in value.items() if k != ".".join(names)}
    head, *rest = names
    if head not in value or (rest and not isinstance(value[head], dict)):
        return value
    inner = _without(value[head], rest) if rest else {}
    return {k: v for k, v in value.items() if k != head} | ({head: inner} if inner else {})
