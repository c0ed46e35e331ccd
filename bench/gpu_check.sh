#!/usr/bin/env bash
# The GPU check (issue 6): ringcomm's device kernels, every collective on CuPy arrays and
# torch CUDA tensors at n=1 (NCCL, and staging) and n=2..4 sharing one GPU (staging), and DDP
# with CUDA gradients through ringcomm's hooks. Prints one table; the log and the table go to
# $1 (default $OUT, else /tmp/gpu_check). Needs CuPy, torch with CUDA, and ringcomm installed.
# Exits non-zero when any row of the table is FAIL; every expected row is in the table,
# a step that crashed or timed out before printing its rows shows them as FAIL.
#
#   bash bench/gpu_check.sh [outdir]
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
log=$out/gpu_check.log
: >"$log"
export PYTHONUNBUFFERED=1
n_step=0
step() {  # step LABEL SECONDS command...: run it, keep its output, record its exit status
    local label=$1 limit=$2
    shift 2
    n_step=$((n_step + 1))
    local t0=$SECONDS steplog=$out/step$n_step.log
    echo "== $label" | tee -a "$log"
    timeout -k 5 "$limit" "$@" >"$steplog" 2>&1
    local rc=$?
    cat "$steplog" >>"$log"
    # The table expects this step's rows; a step that died before printing them is a FAIL
    # with this exit status and the end of its output.
    printf 'GPUSTEP {"label": "%s", "rc": %d, "seconds": %d, "log": "%s"}\n' \
        "$label" $rc $((SECONDS - t0)) "$steplog" >>"$log"
    echo "   rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
    [ $rc -eq 0 ] || grep -E "Error|error|FAIL|Traceback" "$steplog" | tail -15
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import cupy, torch, numba; from cupy.cuda import nccl; print('cupy', cupy.__version__, 'torch', torch.__version__, 'numba', numba.__version__, 'nccl', nccl.get_version() if nccl.available else None)"
} 2>&1 | tee -a "$log"
step "numba warm-up" 90 python3 -c "import ringcomm.native as n; n.warm_cache()"
step "kernels" 60 python3 "$here/gpu_check.py" kernels
step "n=1, auto (NCCL)" 80 env RINGCOMM_GPU_CHUNK_BYTES=1048576 python3 -m ringcomm.run -n 1 python3 "$here/gpu_check.py" ranks
step "n=1, staging" 60 env RINGCOMM_GPU_PATH=staging RINGCOMM_GPU_CHUNK_BYTES=1048576 python3 -m ringcomm.run -n 1 python3 "$here/gpu_check.py" ranks
for n in 2 3 4; do
    step "n=$n, auto (staging: one GPU)" 75 env RINGCOMM_GPU_CHUNK_BYTES=1048576 python3 -m ringcomm.run -n $n python3 "$here/gpu_check.py" ranks
done
step "DDP, n=2" 80 python3 -m ringcomm.run -n 2 python3 "$here/gpu_check.py" ddp
python3 "$here/gpu_check.py" table "$log" >"$out/gpu_check_table.md"
rc=$?
cat "$out/gpu_check_table.md"
exit $rc  # non-zero on any FAIL, a missing row included
