#!/usr/bin/env bash
# The GPU check of issue 29, in one command for a lent 16-core GPU machine, in under 8 minutes: install what the
# machine lacks from a carried wheel folder, restore the model's backbones from a carried pack, then
# benchmarks/gpu_check.py (model alone and `mmsa score` end to end on a few thousand posts served from
# 127.0.0.1; posts/s, GPU utilisation by nvidia-smi sampling, CPU use) writes its results file.
#
# 1. Here (a CPU machine with the project's .venv), once:
#      bash benchmarks/gpu_check.sh --prepare
#    downloads, for the GPU machine's Python 3.12, the wheels of what its image lacks into .whl/ (prefect,
#    duckdb, simplejpeg, ... with their dependencies, less what the image has: MISSING and HAVE below) and packs
#    the default model's backbones into .gpupack/ (benchmarks/gpu_pack.py --random: tokenizer and shapes only,
#    under 1 MB, weights drawn at random there: throughput holds, labels mean nothing). Both folders are ignored by
#    git (.git/info/exclude) and travel with the device tool's `carry`; together they must stay under 64 MiB.
# 2. There (the device tool): command `bash benchmarks/gpu_check.sh`, carry [".whl", ".gpupack"], timeout 540.
#    A call carries 64 MiB, the working tree (~21 MiB, the model's weights) included: when --prepare says so, the
#    wheels that do not fit are in .whl-2, installed by a first call `bash benchmarks/gpu_check.sh --install`
#    (carry [".whl-2"]) right before the run, while the machine is warm (/tmp/site stays).
#    The results come back as $OUT/gpu_check.md (and benchmarks/results/gpu_check.md there).
#
# Dry run on a CPU machine: bash benchmarks/gpu_check.sh --dry-run   (the project's .venv, --device cpu, 200 posts)
set -euo pipefail
cd "$(dirname "$0")/.."
POSTS=${POSTS:-6000}
WHEELS=${WHEELS:-.whl}
PACK=${PACK:-.gpupack}
SITE=${SITE:-/tmp/mmsa-gpu-site}
RESULTS=${OUT:-benchmarks/results}/gpu_check.md
# What the GPU machine's image lacks of the project's dependencies (device/KINDS.md lists what it has).
MISSING="prefect==3.8.8 fastapi>=0.139,<0.151 duckdb zstandard simplejpeg efficientnet-lite-pytorch==0.1.0"
# Distributions the image has (device/KINDS.md), removed from the download: --no-deps there takes the image's own.
HAVE="torch torchvision torchaudio triton numpy pyarrow pillow pandas scipy sympy networkx jinja2 markupsafe fsspec
 filelock requests urllib3 certifi idna charset_normalizer pyyaml tqdm packaging typing_extensions six python_dateutil
 pytz tzdata aiohttp aiosignal frozenlist multidict yarl attrs propcache aiohappyeyeballs anyio h11 httpcore httpx click
 rich markdown_it_py mdurl pygments psutil cloudpickle msgpack toolz sortedcontainers zipp wrapt uvloop mpmath
 huggingface_hub safetensors tokenizers transformers regex hf_xet onnx onnxruntime protobuf matplotlib contourpy
 cycler fonttools kiwisolver pyparsing setuptools opt_einsum ml_dtypes coloredlogs humanfriendly flatbuffers
 typing_inspect mypy_extensions cuda_bindings cuda_pathfinder cuda_toolkit"
if [[ "${1:-}" == "--prepare" ]]; then
    exclude=$(git rev-parse --git-path info/exclude)
    mkdir -p "$(dirname "$exclude")"
    grep -qxF '/.whl*/' "$exclude" 2>/dev/null || echo '/.whl*/' >> "$exclude"
    grep -qxF '/.gpupack/' "$exclude" 2>/dev/null || echo /.gpupack/ >> "$exclude"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # With their dependencies, resolved for the GPU machine's Python and platform...
    .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$WHEELS" $MISSING
    # ...less what the image already has (and its CUDA libraries: nvidia-*).
    HAVE="$HAVE" .venv/bin/python - "$WHEELS" <<'PY'
import os, re, sys
have = {re.sub(r"[-_.]+", "_", n).lower() for n in os.environ["HAVE"].split()}
for name in os.listdir(sys.argv[1]):
    dist = re.sub(r"[-_.]+", "_", name.split("-")[0]).lower()
    if dist in have or dist.startswith("nvidia_"):
        os.remove(os.path.join(sys.argv[1], name))
PY
    rm -f "$WHEELS"/apprise-*.whl  # notifications only, imported on use
    .venv/bin/python benchmarks/gpu_pack.py pack "$PACK" --random
    # A call carries 64 MiB with the working tree: wheels over what is left go to $WHEELS-2, for a first call.
    .venv/bin/python - "$WHEELS" <<'PY'
import os, subprocess, sys
from pathlib import Path
wheels = Path(sys.argv[1])
tree = sum(os.path.getsize(f) for f in subprocess.run(["git", "ls-files"], capture_output=True, text=True).stdout.split()
           if os.path.isfile(f))
budget = 62 * 2**20 - tree - 2**20
second = Path(f"{wheels}-2")
second.mkdir(exist_ok=True)
total = 0
for w in sorted(wheels.glob("*.whl"), key=lambda p: p.stat().st_size):
    if total + w.stat().st_size > budget:
        w.rename(second / w.name)
    else:
        total += w.stat().st_size
left = sorted(second.glob("*.whl"))
print(f"working tree {tree / 2**20:.1f} MiB; {wheels}: {total / 2**20:.1f} MiB")
if left:
    print(f"{second}: {sum(w.stat().st_size for w in left) / 2**20:.1f} MiB ({', '.join(w.name.split('-')[0] for w in left)}):"
          f" carry it in a first call, `bash benchmarks/gpu_check.sh --install {second}`, then run at once (warm machine)")
else:
    second.rmdir()
PY
    du -sh "$WHEELS"* "$PACK"
    exit 0
fi

if [[ "${1:-}" == "--install" ]]; then  # a first call, for wheels over one call's carry
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${2:-$WHEELS-2}"/*.whl
    echo "installed ${2:-$WHEELS-2} into /tmp/site"
    exit 0
fi

if [[ "${1:-}" == "--dry-run" ]]; then
    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_check.py --posts "${POSTS_DRY:-200}" --device cpu \
        --workdir /tmp/mmsa-gpu-check-dry --out /tmp/mmsa-gpu-check-dry/gpu_check.md --budget 300
    exit 0
fi

# On the GPU machine.
started=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 benchmarks/gpu_pack.py unpack "$PACK" /tmp/site
echo "installed in $((SECONDS - started)) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# 8 minutes in all: the script starts no new variant after its budget (the install's seconds counted).
timeout $((470 - (SECONDS - started))) python3 benchmarks/gpu_check.py --posts "$POSTS" --device cuda \
    --workdir "$SITE" --out "$RESULTS" --budget $((400 - (SECONDS - started)))
echo "gpu_check done in $((SECONDS - started)) s: $RESULTS"
