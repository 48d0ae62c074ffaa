#!/usr/bin/env bash
# Packs what the training engine and `python -m bench.training` need beyond PyTorch into
# .whl/ (wheels) and .site/ (an unpacked, trimmed bitsandbytes), for an offline CUDA machine
# whose python3 already holds torch, transformers' deps, numpy and pandas (a lent GPU box, an
# air-gapped worker). The versions are the lock file's. bitsandbytes ships one library per CUDA
# runtime (~130 MB together); only CUDA 13.0's (PyTorch's cu130 builds) and the CPU's are kept
# (KEEP_CUDA=132 keeps another). pydantic & co: the engine's parameters and settings; pillow: the
# engine resizes sampled frames with PIL's filters, as the checkpoints' processors do.
#
#   bash bench/offline_gpu_kit.sh            # here, with network or a local index
#   # there, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD/.site:$PWD
#   python3 -m bench.training --sections big
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
# NAME==VERSION from the hashed lock (names normalised: rouge_score is rouge-score there)
lock() { grep -iE "^${1//[-_.]/[-_.]}==" requirements.lock | head -1 | sed 's/[[:space:]]*\\$//'; }
rm -rf .whl .site && mkdir -p .whl .site
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 any; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d .whl "$(lock av)" "$(lock transformers)" "$(lock peft)" "$(lock nltk)" \
  "$(lock bitsandbytes)" "$(lock pydantic)" "$(lock pydantic-core)" "$(lock pydantic-settings)" \
  "$(lock annotated-types)" "$(lock typing-inspection)" "$(lock python-dotenv)" "$(lock pillow)" \
  2>&1 | grep -v "is ignored" || true
# rouge_score is published as an sdist only: build its (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl "$(lock rouge_score)" 2>&1 | grep -v "is ignored" || true
python3 - <<'PY'
import os, pathlib, re, zipfile
wheel = next(pathlib.Path(".whl").glob("bitsandbytes-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        lib = re.search(r"libbitsandbytes_(\w+)\.so$", name)
        if lib and not (lib.group(1) == "cuda" + os.environ.get("KEEP_CUDA", "130") or lib.group(1) == "cpu"):
            continue
        if name.startswith("bitsandbytes/") or ".dist-info/" in name:  # the metadata: transformers checks the version
            zf.extract(name, ".site")
wheel.unlink()
PY
du -sh .whl .site
echo "carry: .whl .site (both ignored by git)"
