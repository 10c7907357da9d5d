#!/usr/bin/env bash
# The wheels benchmarks/gpu_grpo_step.py needs on the lent GPU machine, written to .whl/ (git-ignored).
#
# That machine runs Python 3.12 with torch 2.11 and transformers 5.17 and cannot reach a package index, while
# mmrl is locked to transformers 5.25. So the locked transformers and what it needs beyond that machine's own
# packages (tokenizers, huggingface_hub 2.x with its httpx2 / hf-xet / click, kernels, regex, ...) travel as
# wheels, at the versions of requirements.lock, and are installed there into a folder put first on PYTHONPATH:
#
#   bash benchmarks/gpu_carry.sh            # here: about 26 MB into .whl/
#   # there (the device tool's command, with carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_grpo_step.py --decode-bench --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."

# transformers 5.25's Requires-Dist and huggingface_hub 2.4's, less what the GPU machine already has at a version
# they accept (numpy, packaging, pyyaml, safetensors, tqdm, filelock, fsspec, typing-extensions, typer).
PACKAGES=(transformers tokenizers huggingface_hub httpx2 httpcore2 truststore kernels hf-xet click tomlkit regex
          accelerate idna)

pins=()
for name in "${PACKAGES[@]}"; do
  pattern="^${name//[-_]/[-_]}=="
  pin=$(grep -i -m1 "$pattern" requirements.lock) || { echo "gpu_carry: $name is not in requirements.lock" >&2; exit 1; }
  pins+=("$pin")
done

rm -rf .whl
mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
printf '%s\n' "${pins[@]}" >.whl/pins.txt
echo "gpu_carry: $(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ (pins in .whl/pins.txt)"
