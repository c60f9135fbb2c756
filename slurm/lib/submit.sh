# shellcheck shell=bash
# Submit mode: a job script run outside Slurm (`bash slurm/p2o_qwen3.sh [sbatch options]`) submits
# itself, turning the environment below into per-component sbatch options. Options left unset fall
# back to the script's #SBATCH lines. Sourced after common.sh.
#
#   NODES            trainer nodes (component 0)                       [#SBATCH: 1]
#   GPUS_PER_NODE    GPUs per trainer node; 0 for a CPU run            [#SBATCH: 8]
#   PARTITION        partition for the trainer (and the rest, unless set below)
#   GEPA_PARTITION   partition of the GEPA CPU node (component 1)      [$PARTITION]
#   GEPA_CPUS        CPUs for the GEPA service                         [#SBATCH: 8]
#   REFLECTION_GPUS  > 0 adds component 2: a GPU node serving the frozen initial model (Self-Ref)  [0]
#   REFLECTION_PARTITION  partition of component 2                     [$PARTITION]
#   TIME             time limit of every component (sbatch --time)     [the partition's default]
#   ACCOUNT          sbatch --account
#   SIGNAL_LEAD_S    seconds before the time limit that SIGUSR1 asks the trainer to checkpoint: one generation
#                    phase or PPO minibatch plus a checkpoint save must fit     [#SBATCH: 900]
#
# submit_job SCRIPT COMPONENTS [SBATCH_OPTIONS...]: COMPONENTS is 1 (trainer only) or 2 (+ GEPA); the
# reflection component comes on top when REFLECTION_GPUS > 0. Execs sbatch; its exit code is the result.
submit_job() {
    local script=$1 components=$2; shift 2
    local common=()
    [[ -n ${TIME:-} ]] && common+=(--time="$TIME")
    [[ -n ${ACCOUNT:-} ]] && common+=(--account="$ACCOUNT")
    local trainer=("${common[@]}")
    [[ -n ${PARTITION:-} ]] && trainer+=(--partition="$PARTITION")
    [[ -n ${NODES:-} ]] && trainer+=(--nodes="$NODES")
    [[ -n ${GPUS_PER_NODE:-} ]] && trainer+=(--gpus-per-node="$GPUS_PER_NODE")
    [[ -n ${SIGNAL_LEAD_S:-} ]] && trainer+=(--signal="B:USR1@$SIGNAL_LEAD_S")
    local args=("$@" "${trainer[@]}")
    if ((components >= 2)); then
        local gepa=("${common[@]}")
        [[ -n ${GEPA_PARTITION:-${PARTITION:-}} ]] && gepa+=(--partition="${GEPA_PARTITION:-$PARTITION}")
        [[ -n ${GEPA_CPUS:-} ]] && gepa+=(--cpus-per-task="$GEPA_CPUS")
        args+=(: --nodes=1 --ntasks=1 "${gepa[@]}")
        if ((${REFLECTION_GPUS:-0} > 0)); then
            local refl=("${common[@]}")
            [[ -n ${REFLECTION_PARTITION:-${PARTITION:-}} ]] && refl+=(--partition="${REFLECTION_PARTITION:-$PARTITION}")
            args+=(: --nodes=1 --ntasks=1 --gpus-per-node="$REFLECTION_GPUS" "${refl[@]}")
        fi
    fi
    log "submitting: sbatch ${args[*]} $script"
    exec sbatch "${args[@]}" "$script"
}
