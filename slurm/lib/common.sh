# shellcheck shell=bash
# Shared basics for the P2O Slurm scripts: logging, the Python that runs P2O, the optional container,
# host-name helpers. Sourced, never run. No global side effects beyond the variables documented here.
#
#   PYTHON     Python with P2O installed (on every node, or inside CONTAINER)   [python3 on PATH]
#   CONTAINER  optional image: *.sif -> `apptainer exec --nv IMAGE`; anything else -> pyxis
#              (`srun --container-image=IMAGE --container-mounts=CONTAINER_MOUNTS`)
#   CONTAINER_MOUNTS  pyxis mounts, e.g. /lustre:/lustre                       [the submit dir]
#   JOB_LOG    file that log()/die() also append to (set once the job directory exists)
#   P2O_CACHE_ROOT  node-local directory for compiler caches (see set_cache_env)
#                   [$SLURM_TMPDIR, else /tmp/$USER-$SLURM_JOB_ID]

: "${PYTHON:=python3}"
: "${CONTAINER:=}"
: "${CONTAINER_MOUNTS:=${SLURM_SUBMIT_DIR:-$PWD}:${SLURM_SUBMIT_DIR:-$PWD}}"

log() {  # log MESSAGE...: timestamped line on stderr (the job's output file) and in $JOB_LOG
    local line
    line="[$(date -u +%Y-%m-%dT%H:%M:%SZ)] p2o-slurm: $*"
    echo "$line" >&2
    if [[ -n ${JOB_LOG:-} ]]; then echo "$line" >>"$JOB_LOG"; fi
}

die() {  # die MESSAGE...: log and exit 1 (before any component has started)
    log "error: $*"
    exit 1
}

# srun options that put a step inside the container (pyxis); empty without one or for apptainer.
container_srun_args() {
    [[ -z $CONTAINER || $CONTAINER == *.sif ]] && return 0
    printf '%s\n' "--container-image=$CONTAINER" "--container-mounts=$CONTAINER_MOUNTS" \
        "--container-workdir=${SLURM_SUBMIT_DIR:-$PWD}"
}

# Prefix that runs a command inside the container on the current node (apptainer); empty otherwise.
container_exec_prefix() {
    [[ $CONTAINER == *.sif ]] || return 0
    printf '%s\n' apptainer exec --nv --bind "${SLURM_SUBMIT_DIR:-$PWD}" "$CONTAINER"
}

# Run P2O's Python on this node (inside the container when there is one): p2o_python ARGS...
p2o_python() {
    local prefix=()
    mapfile -t prefix < <(container_exec_prefix)
    "${prefix[@]}" "$PYTHON" "$@"
}

het_group() {  # het_group N: "--het-group=N" inside a heterogeneous job, nothing in a plain one
    [[ -n ${SLURM_HET_SIZE:-} ]] && echo "--het-group=$1"
    return 0
}

first_host() {  # first_host NODELIST: the first host name of a Slurm node list ("gpu[01-04]" -> gpu01)
    scontrol show hostnames "$1" | head -n 1
}

abspath() {  # abspath PATH: absolute path relative to the submit directory (the file need not exist)
    case $1 in
        /*) echo "$1" ;;
        *) echo "${SLURM_SUBMIT_DIR:-$PWD}/$1" ;;
    esac
}

json_str() {  # json_str TEXT: TEXT as a JSON string literal (quotes included)
    local s=$1
    s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/}
    s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}

atomic_write() {  # atomic_write FILE: stdin -> FILE via a temporary file and rename
    local tmp
    tmp="$1.tmp.$$"
    cat >"$tmp" && mv -f "$tmp" "$1"
}

# set_cache_env: Triton's kernel cache, TorchInductor's and vLLM's compile caches on node-local disk. Their
# defaults live in $HOME (~/.triton, /tmp/torchinductor_$USER, ~/.cache/vllm): on a shared home file system
# every rank of every node compiles into the same NFS/Lustre directory, which is slow and races on its locks.
# Variables already set are kept.
set_cache_env() {
    local root=${P2O_CACHE_ROOT:-${SLURM_TMPDIR:-/tmp/${USER:-$(id -un)}-${SLURM_JOB_ID:-local}}}
    export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$root/triton}
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$root/inductor}
    export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$root/vllm}
}
