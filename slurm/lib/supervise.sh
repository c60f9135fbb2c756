# shellcheck shell=bash
# Start job components as background `srun` steps, watch them, stop them in bounded time, and write the
# job summary. Sourced after common.sh.
#
# A component is a name (trainer, gepa, reflection, bench), the PID of its `srun` on the batch host, its
# log file and its nodes; its step is named p2o-<name>-<job id>. Signals go to every task of the step
# through `scancel --signal` (srun itself turns a SIGTERM into SIGKILL for its tasks, so it is not used
# for that). When one component ends unexpectedly the others are stopped: SIGTERM, then after
# STOP_TIMEOUT_S a double SIGINT to srun (it aborts the step with SIGKILL), then SIGKILL to srun itself.
# Nothing waits without a bound.
#
#   STOP_TIMEOUT_S  seconds a component gets to exit after SIGTERM (the trainer checkpoints in it)  [120]

: "${STOP_TIMEOUT_S:=120}"

declare -gA COMP_PID=() COMP_RC=() COMP_LOG=() COMP_NODES=() COMP_SIGNALLER=()
declare -ga COMP_NAMES=()

# start_component NAME LOG NODES srun ARGS...: run the srun line in the background, output appended to LOG.
start_component() {
    local name=$1 logfile=$2 nodes=$3; shift 3
    [[ $1 == srun ]] && set -- srun --job-name="p2o-$name-${SLURM_JOB_ID:-0}" "${@:2}"
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) job ${SLURM_JOB_ID:-?} attempt ${SLURM_RESTART_COUNT:-0}: $name on $nodes"
        echo "=== $*"
    } >>"$logfile"
    "$@" >>"$logfile" 2>&1 </dev/null &
    COMP_PID[$name]=$!
    COMP_LOG[$name]=$logfile
    COMP_NODES[$name]=$nodes
    COMP_NAMES+=("$name")
    log "started $name on $nodes (srun pid ${COMP_PID[$name]}, log $logfile)"
}

component_running() {  # component_running NAME
    [[ -n ${COMP_PID[$1]:-} && -z ${COMP_RC[$1]:-} ]] && kill -0 "${COMP_PID[$1]}" 2>/dev/null
}

reap_component() {  # reap_component NAME: record the exit code of a component that has ended
    local name=$1 rc=0
    [[ -n ${COMP_RC[$name]:-} || -z ${COMP_PID[$name]:-} ]] && return 0
    kill -0 "${COMP_PID[$name]}" 2>/dev/null && return 1
    wait "${COMP_PID[$name]}" 2>/dev/null || rc=$?
    COMP_RC[$name]=$rc
    log "$name ended with exit code $rc"
}

# wait_any NAMES...: block until one of the named components ends; sets EXITED to its name.
# Returns early (EXITED empty) when a trapped signal interrupts the wait.
wait_any() {
    local name
    EXITED=""
    for name in "$@"; do
        if [[ -n ${COMP_RC[$name]:-} ]] || reap_component "$name"; then EXITED=$name; return 0; fi
    done
    sleep 1 &
    wait $! 2>/dev/null || true
}

step_id() {  # step_id NAME: the Slurm step id of a running component ("12.1", "13.0"), or nothing
    squeue -h -s -u "$(id -un)" -o '%i %j' 2>/dev/null | awk -v n="p2o-$1-${SLURM_JOB_ID:-0}" '$2 == n {print $1; exit}'
}

# signal_component SIGNAL NAME: deliver SIGNAL to every task of the component's step, or through the
# component's own signaller (COMP_SIGNALLER[NAME], a command given SIGNAL) when it has one.
signal_component() {
    local step
    component_running "$2" || return 0
    if [[ -n ${COMP_SIGNALLER[$2]:-} ]]; then ${COMP_SIGNALLER[$2]} "$1" && return 0; fi
    step=$(step_id "$2")
    if [[ -n $step ]] && scancel --signal="$1" "$step" 2>/dev/null; then return 0; fi
    kill "-$1" "${COMP_PID[$2]}" 2>/dev/null   # step not registered yet: srun forwards USR1 as is
    return 0
}

# stop_components NAMES...: SIGTERM, wait up to STOP_TIMEOUT_S, then abort the steps. Bounded.
stop_components() {
    local name deadline running
    for name in "$@"; do
        if component_running "$name"; then log "stopping $name"; signal_component TERM "$name"; fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while :; do
        running=()
        for name in "$@"; do reap_component "$name" || running+=("$name"); done
        ((${#running[@]} == 0)) && return 0
        ((SECONDS >= deadline)) && break
        sleep 0.5
    done
    for name in "${running[@]}"; do
        log "$name still running ${STOP_TIMEOUT_S}s after SIGTERM; aborting its step"
        kill -INT "${COMP_PID[$name]}" 2>/dev/null
        sleep 0.3
        kill -INT "${COMP_PID[$name]}" 2>/dev/null
    done
    deadline=$((SECONDS + 10))
    for name in "${running[@]}"; do
        while ! reap_component "$name" && ((SECONDS < deadline)); do sleep 0.5; done
        if ! reap_component "$name"; then
            kill -KILL "${COMP_PID[$name]}" 2>/dev/null
            reap_component "$name" || COMP_RC[$name]=137
        fi
    done
}

# last_log_line NAME: the component's last error line (an exception, not the launcher's own), else its
# last line; for the summary.
last_log_line() {
    local file=${COMP_LOG[$1]:-} line
    [[ -s $file ]] || return 0
    line=$(grep -E '^[A-Za-z_.]*(Error|Exception)\b|ERROR' "$file" |
        grep -v -e 'ChildFailedError' -e 'SignalException' -e '^srun: ' | tail -n 1)
    [[ -n $line ]] || line=$(grep -v -e '^[[:space:]]*$' -e '^srun: ' -e '^slurmstepd' "$file" | tail -n 1)
    printf '%s' "${line:0:300}"
}

describe_rc() {  # describe_rc RC: "exit code 3" or "exit code 137 (SIGKILL)"
    local rc=$1
    if ((rc > 128 && rc < 160)); then
        echo "exit code $rc (SIG$(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128))))"
    else
        echo "exit code $rc"
    fi
}

# write_summary STATUS FAILED_COMPONENT REASON EXIT_CODE: $JOB_DIR/summary.json (atomic), one line in
# $JOB_DIR/summary.txt and in the job log. STATUS: success | requeued | failed | cancelled.
write_summary() {
    local status=$1 failed=$2 reason=$3 code=$4 name first=1 comps="" line
    for name in "${COMP_NAMES[@]}"; do
        ((first)) || comps+=", "
        first=0
        comps+="$(json_str "$name"): {\"exit_code\": ${COMP_RC[$name]:-null}, \"nodes\": $(json_str "${COMP_NODES[$name]}"), \"log\": $(json_str "${COMP_LOG[$name]}")}"
    done
    atomic_write "$JOB_DIR/summary.json" <<EOF
{
  "job_id": $(json_str "${SLURM_JOB_ID:-}"),
  "attempt": ${SLURM_RESTART_COUNT:-0},
  "status": $(json_str "$status"),
  "ok": $([[ $status == success ]] && echo true || echo false),
  "failed_component": $(if [[ -n $failed ]]; then json_str "$failed"; else echo null; fi),
  "reason": $(json_str "$reason"),
  "exit_code": $code,
  "run_dir": $(json_str "${RUN_DIR:-}"),
  "job_dir": $(json_str "${JOB_DIR:-}"),
  "started": $(json_str "${JOB_STARTED:-}"),
  "finished": $(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "components": {${comps}}
}
EOF
    line="job ${SLURM_JOB_ID:-?} attempt ${SLURM_RESTART_COUNT:-0}: ${status^^}"
    [[ -n $failed ]] && line+=" (component: $failed)"
    line+=" - $reason"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $line" >>"$JOB_DIR/summary.txt"
    log "SUMMARY: $line"
}
