#!/usr/bin/env bash
# The GPU checks of the cuda backend, in one go, on a machine with a CUDA GPU and torch but no package index:
# builds and installs mpq against the python3 there (no build isolation), runs the tests that need a GPU, then
# bench/cuda_kernels.py, and bench/timing_fidelity.py --backend cuda on SmolLM2-135M's shapes and on four layers of
# Llama-3-8B (random weights, bench/configs/). Logs go to $OUT (default ./gpu_out). Each step has its own time
# limit so that one that hangs does not take the others with it.
#   [SKIP="smollm2_prefill ..."] bash bench/gpu_run.sh [plans]
set -u
OUT=${OUT:-gpu_out}
PLANS=${1:-20}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
py=python3

step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a limit, its output to $OUT/NAME.log and the screen
    local name=$1 limit=$2
    shift 2
    if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "=== $name: skipped"; return 0; fi
    echo "=== $name ($(date +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "^\[transformers\]"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc"
    return "$rc"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$py -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(), 'transformers', transformers.__version__)"
step build 150 $py -m pip install -q --no-build-isolation --no-deps --no-index --no-compile . || exit 1
step tests 100 $py -m pytest -q --tb=short -p no:cacheprovider tests/test_cuda_backend.py \
    tests/test_profile.py::test_cuda_profile_runs tests/test_formats_api.py::test_cuda_tensors_go_through_the_reference
step kernels 60 $py bench/cuda_kernels.py
fid=($py bench/timing_fidelity.py --backend cuda --plans "$PLANS" --repeats 15 --candidates fp8,int8)
L8=bench/configs/llama3-8b-4layers.json
S2=bench/configs/smollm2-135m.json
step llama8b_prefill 90 "${fid[@]}" --config $L8 --phase prefill --seq-len 2048 --plan-repeats 31
step llama8b_decode 75 "${fid[@]}" --config $L8 --phase decode --seq-len 512 --plan-repeats 31
step smollm2_decode 100 "${fid[@]}" --config $S2 --phase decode --seq-len 512 --plan-repeats ${S2_REPEATS:-21}
step smollm2_prefill 100 "${fid[@]}" --config $S2 --phase prefill --seq-len 2048 --plan-repeats ${S2_REPEATS:-21}
