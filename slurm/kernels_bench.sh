#!/bin/bash
# Kernel microbenchmarks (`p2o bench kernels`) on one GPU node: fused log-prob / GRPO loss / dual-context
# kernels against their baselines; the table goes to the job's log, the rows to a CSV in the job directory.
#
#   sbatch slurm/kernels_bench.sh
#   BENCH_ARGS="--models qwen3-4b --tokens 4096 16384" sbatch slurm/kernels_bench.sh
#
# Settings (environment):
#   RUN_DIR     where the job directory goes ($RUN_DIR/slurm/<job id>/: bench.log, kernels_bench.csv,
#               sinfo/scontrol snapshots, summary.json)                          [runs/kernels_bench]
#   BENCH_ARGS  extra options for `p2o bench kernels` (see `p2o bench kernels --help`)
#   PYTHON, CONTAINER: as for p2o_qwen3.sh
#
#SBATCH --job-name=p2o-kernels-bench
#SBATCH --output=slurm-%x-%j.out
#SBATCH --nodes=1 --ntasks=1 --gpus-per-node=1 --cpus-per-task=8
#SBATCH --time=01:00:00
set -uo pipefail

SCRIPT_NAME=slurm/kernels_bench.sh

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
[[ -n ${SLURM_JOB_ID:-} ]] || exec sbatch "$@" "$P2O_SLURM_DIR/kernels_bench.sh"
source "$P2O_SLURM_DIR/lib/supervise.sh"

JOB_STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
RUN_DIR=$(abspath "${RUN_DIR:-runs/kernels_bench}")
JOB_DIR=$RUN_DIR/slurm/$SLURM_JOB_ID
mkdir -p "$JOB_DIR" || die "cannot create the job directory $JOB_DIR"
JOB_LOG=$JOB_DIR/job.log
sinfo >"$JOB_DIR/sinfo.txt" 2>&1
scontrol show job "$SLURM_JOB_ID" >"$JOB_DIR/scontrol_job.txt" 2>&1
set_cache_env
read -ra bench_args <<<"${BENCH_ARGS:-}"
cargs=() prefix=()
mapfile -t cargs < <(container_srun_args)
mapfile -t prefix < <(container_exec_prefix)
start_component bench "$JOB_DIR/bench.log" "$SLURM_JOB_NODELIST" \
    srun --ntasks=1 --export=ALL "${cargs[@]}" "${prefix[@]}" \
    "$PYTHON" -m p2o.cli bench kernels --out "$JOB_DIR/kernels_bench.csv" "${bench_args[@]}"
trap 'signal_component TERM bench' TERM INT
until reap_component bench; do sleep 1 & wait $!; done
rc=${COMP_RC[bench]}
if ((rc == 0)); then
    write_summary success "" "benchmark finished; rows in $JOB_DIR/kernels_bench.csv" 0
else
    write_summary failed bench "p2o bench kernels failed with $(describe_rc "$rc"); last log line: $(last_log_line bench)" "$rc"
fi
exit "$rc"
