#!/usr/bin/env bash
# Every GPU check and benchmark in one command, for a lent GPU machine (its python3 holds torch and Triton; no
# registry). Run from the repository root:
#
#   bash bench/gpu_session.sh            # $OUT (default /tmp/gpu_session) receives the logs and reports
#
# Optional, beside the tree (ignored by git, carried to the machine by the caller):
#   .whl/       wheels installed first with --no-index (the pinned timm when the machine's is another version)
#   .official/  the official checkouts (bench/official_*.py layout) for the "vs official" columns of bench.models
#
# Steps, each under its own time limit (seconds, overridable) so that one slow step cannot take the others' time:
#   1. T_TESTS  pytest: tests/kernels on CUDA (every case, the CUDA-only ones included; the sm80/sm90 build matrix
#               is left out: it compiles through a stand-in driver and needs no GPU) and the models' CUDA-vs-CPU
#               contract test
#   2. T_BENCH  bench.gpu_check --skip-correctness: bench.na, bench.routing, bench.models (bf16 autocast, with the
#               official twins when .official/ is there; COMPILE=reduce-overhead times every model under
#               torch.compile with CUDA graphs, which takes the host-bound op dispatch out of the eager steps)
#   3. T_CHECK  bench.gpu_check --skip-bench: the kernels against the fp64 reference in every dtype, and their
#               registers, spills and shared memory
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
ROOT=$(pwd)
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
# the source tree as the installed packages: zoo from the root, zoo_kernels from kernels/
mkdir -p /tmp/zoo_path && ln -sfn "$ROOT/kernels" /tmp/zoo_path/zoo_kernels
export PYTHONPATH="$ROOT:/tmp/zoo_path${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
    echo "cpus $(nproc)"
} 2>&1 | tee "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, print the status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc $rc in $((SECONDS - start)) s (limit $limit s)"
}

# natten (the CPU-only peer of the reference tests) is not installed there; TESTS / TEST_K narrow a rerun
read -r -a tests <<< "${TESTS:-tests/kernels --ignore tests/kernels/test_build_matrix.py tests/zoo/models/test_contract.py}"
step tests "${T_TESTS:-200}" python3 -m pytest -q -p no:cacheprovider -n "${JOBS:-16}" --timeout 180 "${tests[@]}" \
    -k "${TEST_K:-(not test_contract or on_cuda) and not natten}"
tail -n 25 "$OUT/tests.log"

official=()
[ -d .official ] && official=(--official-root "$ROOT/.official")
step bench "${T_BENCH:-200}" python3 -m bench.gpu_check --skip-correctness --no-natten "${official[@]}" \
    --compile "${COMPILE:-none}" --out "$OUT/bench.md"
step check "${T_CHECK:-150}" python3 -m bench.gpu_check --skip-bench --no-natten --jobs "${JOBS:-16}" \
    --out "$OUT/check.md"
grep -E "^(All cases pass|[0-9]+ failed|Compiled ahead|Total)" "$OUT/check.md" "$OUT/bench.md" 2>/dev/null
grep -c "ok (" "$OUT/check.log" 2>/dev/null | sed 's/^/correctness rows ok so far: /'
grep -E "FAIL|ERROR" "$OUT/check.log" 2>/dev/null | head -n 10
