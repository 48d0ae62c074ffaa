#!/usr/bin/env bash
# Issue 15's device check, one script for a lent CUDA machine, run from the repository root with
# the kit of bench/offline_gpu_kit.sh carried (.whl .site). Everything it measures lands in $OUT
# (env.txt, tests.log, bench.log) and the last lines print a summary.
#   1. the engine's tests on CUDA: tiny models of both architectures x both tasks in NF4, the
#      adapter reloaded, evaluation, predict, SIGTERM stop and --resume (tests/training);
#      and the catalog's real checkpoints (stored published configs, cut to a few layers) trained
#      two NF4 steps with their published preprocessing, which is checked against transformers'
#      processors (tests/training/test_real_checkpoints.py, test_processor_parity.py);
#   2. python -m bench.training --sections big: VideoLLaMA 3 7B (random weights, the published
#      config and processor configs stored in training/models/checkpoints/), NF4 vs bf16 LoRA
#      through the engine and the bare transformers+peft NF4 loop;
#   3. IDEFICS 9B in NF4 through the engine, if the deadline allows.
# Dry run on a CPU: SIZE=tiny OUT=/tmp/gpu-out bash bench/gpu_check.sh
set -uo pipefail
# RUN_TESTS=0 skips 1; REPEATS runs 2 that many times; VL_VARIANTS / IDEFICS_VARIANTS choose the runs.
OUT=${OUT:-/tmp/gpu-out}; SIZE=${SIZE:-7b}; DEADLINE=${DEADLINE:-480}; WORK=${WORK:-/tmp/bigwork}
RUN_TESTS=${RUN_TESTS:-1}; REPEATS=${REPEATS:-1}; VL_VARIANTS=${VL_VARIANTS:-nf4,bare,none}
IDEFICS_VARIANTS=${IDEFICS_VARIANTS:-nf4,bare}
mkdir -p "$OUT" "$WORK"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD/.site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $PY -c "import torch, transformers, peft, bitsandbytes, av, pydantic; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'av', av.__version__, 'pydantic', pydantic.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} 2>&1 | tee "$OUT/env.txt"

# the random checkpoints are written (GPU RNG, disk) while the tests run
$PY -m bench.training --sections big --size "$SIZE" --archs video_llama,flamingo --variants write --work "$WORK" \
  > "$OUT/write.log" 2>&1 &
writer=$!
if [ "$RUN_TESTS" = 1 ]; then
  timeout 300 $PY -m pytest -q -p no:cacheprovider --confcutdir=tests/training --basetemp=/tmp/pt -o timeout=280 \
    tests/training/test_qlora_training.py tests/training/test_stop_resume.py \
    tests/training/test_real_checkpoints.py tests/training/test_processor_parity.py > "$OUT/tests.log" 2>&1
  echo "tests exit $?" >> "$OUT/tests.log"
  echo "train.log files of the tests that ran on cuda: $(grep -l ' on cuda' -r /tmp/pt --include train.log | wc -l)" \
    "of $(find /tmp/pt -name train.log | wc -l)" >> "$OUT/tests.log"
else
  echo "tests skipped (RUN_TESTS=0)" > "$OUT/tests.log"
fi
wait $writer; echo "writer exit $?" >> "$OUT/write.log"

left() { echo $(( DEADLINE - SECONDS )); }
for r in $(seq "$REPEATS"); do
  timeout $(( $(left) > 30 ? $(left) : 30 )) $PY -m bench.training --sections big --size "$SIZE" --archs video_llama \
    --variants "$VL_VARIANTS" --work "$WORK" >> "$OUT/bench.log" 2>&1
  echo "video_llama bench run $r exit $? at ${SECONDS}s" >> "$OUT/bench.log"
done
if [ "$(left)" -gt 90 ]; then
  timeout "$(left)" $PY -m bench.training --sections big --size "$SIZE" --archs flamingo --variants "$IDEFICS_VARIANTS" \
    --work "$WORK" > "$OUT/bench-idefics.log" 2>&1
  echo "idefics bench exit $? at ${SECONDS}s" >> "$OUT/bench-idefics.log"
else
  echo "IDEFICS 9B skipped: $(left) s left of the ${DEADLINE} s deadline" > "$OUT/bench-idefics.log"
fi
echo "== env"; cat "$OUT/env.txt"
echo "== tests"; tail -n 15 "$OUT/tests.log"
echo "== write"; grep -E "^# |exit" "$OUT/write.log"
echo "== bench"; grep -E "^# |exit|Error|error" "$OUT/bench.log" | grep -v "device: " | tail -n 60
echo "== idefics"; grep -E "^# |exit|Error|error|skipped" "$OUT/bench-idefics.log" | grep -v "device: " | tail -n 20
echo "total ${SECONDS}s"
