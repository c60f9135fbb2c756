#!/bin/bash
# Scaling sweep: one Slurm job per (model, node count, layout) through slurm/p2o_qwen3.sh, then one CSV.
#
#   bash slurm/scaling_sweep.sh submit            # plan the layouts, submit every job, write the manifest
#   bash slurm/scaling_sweep.sh collect [SWEEP_DIR]   # after the jobs: SWEEP_DIR/sweep.csv
#
# Each job trains STEPS steps of configs/scaling/qwen3_<size>_p2o.yaml with the layout the planner
# recommends for that node count (TOP > 1: the TOP fastest feasible layouts), into SWEEP_DIR/<name>/.
# `collect` writes one row per job: measured step-time breakdown (generate / verify / old log-prob /
# update / weight sync), generated tokens/s/GPU and peak GPU memory, next to the planner's predictions.
#
# Settings (environment):
#   MODELS        config sizes to sweep                                  [4b 8b 14b 32b]
#   NODE_COUNTS   trainer node counts                                    [1 2 4 8]
#   TOP           layouts per (model, node count): 1 = the recommended   [1]
#   STEPS         training steps per job (the first is left out as warm-up)  [6]
#   GPUS_PER_NODE GPUs per node (the planner assumes 80 GiB H100s)       [8]
#   SWEEP_DIR     where the runs and the manifest go                     [runs/scaling_sweep/<UTC stamp>]
#   DRY_RUN=1     print the submissions instead of running them
#   PYTHON, CONTAINER, PARTITION, TIME, ACCOUNT, ...: passed on to slurm/p2o_qwen3.sh (see its header)
set -euo pipefail

SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SLURM_DIR")
source "$SLURM_DIR/lib/common.sh"

: "${MODELS:=4b 8b 14b 32b}"
: "${NODE_COUNTS:=1 2 4 8}"
: "${TOP:=1}"
: "${STEPS:=6}"
: "${GPUS_PER_NODE:=8}"
: "${DRY_RUN:=0}"

submit() {
    : "${SWEEP_DIR:=runs/scaling_sweep/$(date -u +%Y%m%dT%H%M%SZ)}"
    mkdir -p "$SWEEP_DIR"
    local manifest=$SWEEP_DIR/manifest.tsv size config model first=1
    for size in $MODELS; do
        config=configs/scaling/qwen3_${size}_p2o.yaml
        [[ -f $REPO/$config ]] || die "no $config (MODELS takes sizes such as 4b 8b 14b 32b)"
        model="Qwen3-${size^^}"
        # shellcheck disable=SC2086
        local header=(); ((first)) && header=(--header)
        "$PYTHON" -m p2o.plan.sweep layouts --model "$model" --config "$REPO/$config" --nodes $NODE_COUNTS --top "$TOP" \
            --gpus-per-node "$GPUS_PER_NODE" "${header[@]}" >"$SWEEP_DIR/.layouts.tsv" \
            || die "planning $model failed"
        if ((first)); then
            head -n 1 "$SWEEP_DIR/.layouts.tsv" | sed 's/$/\trun_dir\tconfig/' >"$manifest"
            sed -i 1d "$SWEEP_DIR/.layouts.tsv"
            first=0
        fi
        local name m nodes tp pp dp vllm_tp rest
        while IFS=$'\t' read -r name m nodes tp pp dp vllm_tp rest; do
            local run_dir=$SWEEP_DIR/$name
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$m" "$nodes" "$tp" "$pp" "$dp" "$vllm_tp" \
                "$rest" "$name" "$config" >>"$manifest"
            local overrides="parallel.tp=$tp parallel.pp=$pp rollout.vllm_tp=$vllm_tp logging.run_dir=$run_dir"
            overrides+=" train.epochs=1 train.steps_per_epoch=$STEPS checkpoint.save_every_steps=0"
            log "submit $name: NODES=$nodes OVERRIDES=\"$overrides\""
            if [[ $DRY_RUN == 1 ]]; then
                echo "CONFIG=$config NODES=$nodes GPUS_PER_NODE=$GPUS_PER_NODE OVERRIDES=\"$overrides\" bash slurm/p2o_qwen3.sh"
            else
                (cd "$REPO" && CONFIG=$config NODES=$nodes GPUS_PER_NODE=$GPUS_PER_NODE OVERRIDES=$overrides \
                    bash "$SLURM_DIR/p2o_qwen3.sh") || die "submitting $name failed"
            fi
        done <"$SWEEP_DIR/.layouts.tsv"
    done
    rm -f "$SWEEP_DIR/.layouts.tsv"
    log "manifest: $manifest; when the jobs are done: bash slurm/scaling_sweep.sh collect $SWEEP_DIR"
}

collect() {
    local dir=${1:-${SWEEP_DIR:-}}
    [[ -n $dir && -f $dir/manifest.tsv ]] || die "collect: give the sweep directory (it holds manifest.tsv)"
    "$PYTHON" -m p2o.plan.sweep collect "$dir/manifest.tsv" --out "$dir/sweep.csv" --gpus-per-node "$GPUS_PER_NODE"
}

case ${1:-} in
    submit) submit ;;
    collect) shift; collect "$@" ;;
    *) echo "usage: bash slurm/scaling_sweep.sh submit | collect [SWEEP_DIR]" >&2; exit 2 ;;
esac
