# shellcheck shell=bash
# How the trainer is launched on heterogeneous-job component 0: one `srun` task per node running
# torchrun (LAUNCHER=torchrun, the default) or one `srun` task per rank (LAUNCHER=srun). Sourced after
# common.sh.
#
#   GPUS_PER_NODE       GPUs (= trainer ranks) per node; 0 = CPU run: gloo, no GPU binding
#                       [the job's --gpus-per-node for component 0, else 0]
#   CPU_PROCS_PER_NODE  ranks per node when GPUS_PER_NODE=0                                   [1]
#   LAUNCHER            torchrun | srun                                                        [torchrun]
#   MASTER_PORT         rendezvous port on the first trainer node          [20000 + job id % 10000 + attempt]
#
# Signals for the trainer (SIGUSR1: checkpoint and exit 75; SIGTERM: the same, then stop) go to the rank
# processes only, never to the whole step: Slurm signals every process of a step and torchrun signals each
# rank's process group, and either would also kill the helper processes a rank is checkpointing with.
# Each task records its PID in $PID_DIR/trainer.<node>.<task>; `signal_trainer_ranks` runs one task per
# node (srun --overlap) that signals the ranks there: torchrun's children, or the task itself with
# LAUNCHER=srun. torchrun ignores SIGUSR1, so a stray one cannot end the agent.
#
# Network knobs for GPU runs are set only when unset (export your own to override):
#   NCCL_DEBUG=WARN                      NCCL's log level (INFO to debug hangs)
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=1    a failed collective aborts the rank instead of hanging
#   CUDA_DEVICE_MAX_CONNECTIONS=1        Megatron-Core: TP/SP communication overlap needs a single queue
#   NCCL_IB_HCA, NCCL_SOCKET_IFNAME, NCCL_IB_GID_INDEX, NCCL_NET_GDR_LEVEL, GLOO_SOCKET_IFNAME:
#                                        cluster specific, passed through untouched (see docs/slurm.md)

: "${CPU_PROCS_PER_NODE:=1}"
: "${LAUNCHER:=torchrun}"

# GPUs per node from the allocation ("8", "h100:8", "gpu:h100:8") when not given.
detect_gpus_per_node() {
    local spec=${SLURM_GPUS_PER_NODE_HET_GROUP_0:-${SLURM_GPUS_PER_NODE:-0}}
    spec=${spec##*:}
    [[ $spec =~ ^[0-9]+$ ]] && echo "$spec" || echo 0
}

set_network_env() {  # set_network_env GPUS_PER_NODE
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    (($1 > 0)) || return 0
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
}

# check_layout NODES PROCS_PER_NODE TP PP: the world size must be a multiple of TP x PP (DP = the rest).
check_layout() {
    local nodes=$1 per_node=$2 tp=$3 pp=$4 world
    world=$((nodes * per_node))
    ((world > 0)) || { echo "no trainer ranks: NODES=$nodes x ranks per node=$per_node"; return 1; }
    if ((world % (tp * pp))); then
        echo "world size $world (NODES=$nodes x $per_node ranks per node) is not a multiple of" \
            "parallel.tp x parallel.pp = $tp x $pp; change the config or NODES/GPUS_PER_NODE"
        return 1
    fi
    echo "world size $world = tp $tp x pp $pp x dp $((world / (tp * pp)))"
}

# trainer_srun_cmd NODES PROCS_PER_NODE MASTER_ADDR MASTER_PORT RDZV_ID PID_DIR -- P2O_ARGS...: print the
# srun command line (NUL-separated, for mapfile -d '') that launches `p2o ARGS` on het group 0.
trainer_srun_cmd() {
    local nodes=$1 per_node=$2 addr=$3 port=$4 rdzv_id=$5 pid_dir=$6; shift 7
    local cargs=() prefix=()
    mapfile -t cargs < <(container_srun_args)
    mapfile -t prefix < <(container_exec_prefix)
    local srun=(srun $(het_group 0) --nodes="$nodes" --kill-on-bad-exit=1 --export=ALL "${cargs[@]}")
    # Every task: record its PID, ignore SIGUSR1 until P2O installs its handler, then become the command.
    local task=(bash -c 'echo $$ >"$0/trainer.$SLURMD_NODENAME.$SLURM_PROCID"; trap "" USR1; exec "$@"' "$pid_dir")
    if [[ $LAUNCHER == srun ]]; then
        # One task per rank; the env:// rendezvous variables come from Slurm's own.
        srun+=(--ntasks-per-node="$per_node" --ntasks=$((nodes * per_node)))
        printf '%s\0' "${srun[@]}" bash -c \
            'echo $$ >"$0/trainer.$SLURMD_NODENAME.$SLURM_PROCID"; trap "" USR1
             export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS LOCAL_WORLD_SIZE=$SLURM_NTASKS_PER_NODE
             exec "$@"' "$pid_dir" "${prefix[@]}" "$PYTHON" -m p2o.cli "$@"
    elif [[ $LAUNCHER == torchrun ]]; then
        # One torchrun agent per node; the agents meet at MASTER_ADDR:MASTER_PORT (c10d rendezvous).
        srun+=(--ntasks-per-node=1 --ntasks="$nodes")
        printf '%s\0' "${srun[@]}" "${task[@]}" "${prefix[@]}" "$PYTHON" -m torch.distributed.run \
            --nnodes="$nodes" --nproc-per-node="$per_node" --max-restarts=0 \
            --rdzv-backend=c10d --rdzv-endpoint="$addr:$port" --rdzv-id="$rdzv_id" \
            -m p2o.cli "$@"
    else
        echo "LAUNCHER must be torchrun or srun, got '$LAUNCHER'" >&2
        return 1
    fi
}

# signal_trainer_ranks SIGNAL NODES PID_DIR: deliver SIGNAL to every trainer rank, on every trainer node.
signal_trainer_ranks() {
    local sig=$1 nodes=$2 pid_dir=$3
    # shellcheck disable=SC2016
    timeout 60 srun --overlap $(het_group 0) --nodes="$nodes" --ntasks-per-node=1 --ntasks="$nodes" bash -c '
        sig=$1 pid_dir=$2 launcher=$3
        children() {  # direct children of PID $1, from /proc (no procps needed)
            local parent=$1 d stat fields
            for d in /proc/[0-9]*; do
                stat=$(<"$d/stat") 2>/dev/null || continue
                read -ra fields <<<"${stat##*) }"         # after "pid (comm) ": state ppid ...
                [[ ${fields[1]} == "$parent" ]] && echo "${d#/proc/}"
            done
        }
        for f in "$pid_dir"/trainer."$SLURMD_NODENAME".*; do
            [[ -s $f ]] || continue
            pid=$(<"$f")
            if [[ $launcher == torchrun ]]; then targets=$(children "$pid"); else targets=$pid; fi
            [[ -n $targets ]] && kill "-$sig" $targets 2>/dev/null
        done
        exit 0' p2o-signal "$sig" "$pid_dir" "$LAUNCHER"
}
