#!/bin/bash
# GPU smoke test: the GPU path end to end in about 8 minutes, one PASS/FAIL/SKIP line per stage.
#
#   sbatch slurm/gpu_smoke.sh                       # a node with 2 GPUs (stages that need 2 skip on 1)
#   bash slurm/gpu_smoke.sh                         # the same on the current machine, without Slurm
#   STAGES="env kernels" bash slurm/gpu_smoke.sh    # a subset
#
# Stages (python -m p2o.smoke; docs/gpu.md says what each checks), each in its own process under its own
# time limit: env, kernels, parity, colocated, checkpoint, train-1gpu, train-tp2. Without CUDA the stages run
# their CPU variants or skip, so the script is exercised in CI as well. Exit status: 0 when no stage failed,
# 1 otherwise.
#
# Settings (environment):
#   STAGES          stages to run, in order                                  [all]
#   SMOKE_DIR       where each stage's log and files go       [runs/gpu_smoke/<job id or date>]
#   SMOKE_TIMEOUT_S default time limit of a stage in seconds                  [600]
#   SMOKE_TIMEOUT_<STAGE>  a stage's own limit, e.g. SMOKE_TIMEOUT_KERNELS=300 (upper case, - as _)
#   PYTHON, CONTAINER (*.sif: apptainer), P2O_CACHE_ROOT: see lib/common.sh
#
#SBATCH --job-name=p2o-gpu-smoke
#SBATCH --output=slurm-%x-%j.out
#SBATCH --nodes=1 --ntasks=1 --gpus-per-node=2 --cpus-per-task=16 --time=00:45:00
set -uo pipefail

find_slurm_dir() {  # as in p2o_qwen3.sh: the batch copy of this script runs from Slurm's spool directory
    local cand cmd=""
    [[ -n ${SLURM_JOB_ID:-} ]] && cmd=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=//p' | head -n 1)
    for cand in "${P2O_SLURM_DIR:-}" "${cmd:+$(dirname "$cmd")}" "$(dirname "${BASH_SOURCE[0]}")" "${SLURM_SUBMIT_DIR:-.}/slurm"; do
        [[ -n $cand && -f $cand/lib/common.sh ]] && { (cd "$cand" && pwd); return 0; }
    done
    echo "p2o-slurm: cannot find slurm/lib (set P2O_SLURM_DIR=/path/to/p2o/slurm)" >&2
    return 1
}
P2O_SLURM_DIR=$(find_slurm_dir) || exit 1
source "$P2O_SLURM_DIR/lib/common.sh"
REPO=$(cd "$P2O_SLURM_DIR/.." && pwd)
cd "$REPO" || exit 1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

: "${STAGES:=env kernels parity colocated checkpoint train-1gpu train-tp2}"
: "${SMOKE_TIMEOUT_S:=600}"
: "${SMOKE_DIR:=runs/gpu_smoke/${SLURM_JOB_ID:-$(date -u +%Y%m%d-%H%M%S)}}"
SMOKE_DIR=$(abspath "$SMOKE_DIR")
mkdir -p "$SMOKE_DIR" || die "cannot create $SMOKE_DIR"
SUMMARY=$SMOKE_DIR/summary.txt
set_cache_env

{
    echo "p2o GPU smoke test $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (modified)')"
    if command -v nvidia-smi >/dev/null; then nvidia-smi -L 2>&1; else echo "no nvidia-smi: CPU variants"; fi
} | tee "$SUMMARY"

# stage_limit STAGE: SMOKE_TIMEOUT_<STAGE> or SMOKE_TIMEOUT_S
stage_limit() {
    local var=SMOKE_TIMEOUT_${1^^}
    var=${var//-/_}
    echo "${!var:-$SMOKE_TIMEOUT_S}"
}

# run_stage STAGE: run it under its limit; print and record its one result line; return 1 if it failed.
run_stage() {
    local stage=$1 limit rc=0 line logf
    limit=$(stage_limit "$stage")
    logf=$SMOKE_DIR/$stage.log
    # shellcheck disable=SC2016  # $0 and $@ belong to the inner bash
    timeout --kill-after=30 "$limit" bash -c 'source "$0/lib/common.sh"; p2o_python -m p2o.smoke run "$@"' \
        "$P2O_SLURM_DIR" "$stage" --out "$SMOKE_DIR/$stage" >"$logf" 2>&1 </dev/null || rc=$?
    line=$(grep -E "^(PASS|SKIP|FAIL) $stage " "$logf" | tail -n 1)
    if ((rc == 124 || rc == 137)); then
        line="FAIL $stage ${limit}s timed out after ${limit} s (log $logf)"
    elif ((rc != 0 && rc != 77)) && [[ $line != FAIL* ]]; then
        line="FAIL $stage exit code $rc (log $logf): $(grep -v '^[[:space:]]*$' "$logf" | tail -n 1 | cut -c1-300)"
    elif [[ -z $line ]]; then
        line="FAIL $stage exit code $rc without a result line (log $logf)"
    fi
    echo "$line" | tee -a "$SUMMARY"
    [[ $line != FAIL* ]]
}

failed=()
for stage in $STAGES; do
    run_stage "$stage" || failed+=("$stage")
done
if ((${#failed[@]})); then
    echo "GPU smoke test: FAILED (${failed[*]}); logs in $SMOKE_DIR" | tee -a "$SUMMARY"
    exit 1
fi
echo "GPU smoke test: no stage failed; logs in $SMOKE_DIR" | tee -a "$SUMMARY"
exit 0
