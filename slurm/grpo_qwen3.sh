#!/bin/bash
# Baseline: plain GRPO (p2o.enabled=false) through the same loop, as a single-component Slurm job: the
# trainer on GPU nodes, no GEPA service, no reflection model. Same settings, logs and pre-emption
# handling as slurm/p2o_qwen3.sh (see its header and docs/slurm.md).
#
#   CONFIG=configs/qwen3_4b_grpo.yaml sbatch slurm/grpo_qwen3.sh
#   CONFIG=configs/qwen3_4b_grpo.yaml NODES=2 GPUS_PER_NODE=8 bash slurm/grpo_qwen3.sh      # sizes from env
#
# Settings (environment): CONFIG, OVERRIDES, RUN_DIR, CONTAINER, PYTHON, NODES, GPUS_PER_NODE,
# CPU_PROCS_PER_NODE, PARTITION, TIME, ACCOUNT, LAUNCHER, STOP_TIMEOUT_S, MAX_REQUEUES - as for p2o_qwen3.sh.
# `p2o.enabled=false` is applied before OVERRIDES.
#
#SBATCH --job-name=grpo-qwen3
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@900
#SBATCH --nodes=1 --ntasks-per-node=1 --gpus-per-node=8 --exclusive --mem=0
set -uo pipefail

SCRIPT_NAME=slurm/grpo_qwen3.sh

# The batch copy of this script runs from Slurm's spool directory: find slurm/lib through the job's
# Command (the submitted path), this file's own directory, or the submit directory.
find_slurm_dir() {
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

if [[ -z ${SLURM_JOB_ID:-} ]]; then
    source "$P2O_SLURM_DIR/lib/submit.sh"
    submit_job "$P2O_SLURM_DIR/grpo_qwen3.sh" 1 "$@"
fi

OVERRIDES="p2o.enabled=false ${OVERRIDES:-}"
source "$P2O_SLURM_DIR/lib/endpoints.sh"
source "$P2O_SLURM_DIR/lib/launch.sh"
source "$P2O_SLURM_DIR/lib/supervise.sh"
source "$P2O_SLURM_DIR/lib/job.sh"
run_training_job
