# shellcheck shell=bash
# The body of a P2O training job (slurm/p2o_qwen3.sh, slurm/grpo_qwen3.sh), run by the batch script on
# the first node of heterogeneous-job component 0. Sourced after common.sh, endpoints.sh, launch.sh and
# supervise.sh; call run_training_job.
#
# Components by heterogeneous group: 0 = trainer (always), 1 = GEPA service (when the job has it),
# 2 = Self-Ref reflection server (when the job has it). Each attempt (a requeue starts a new one):
#   1. job directory $RUN_DIR/slurm/<job id>: job.log, config.yaml, sinfo.txt, scontrol_job.txt, token (0600)
#   2. services on their nodes (reflection first, then GEPA with its endpoint table); wait for
#      endpoints/<name>.url and GET /health -> endpoints.json
#   3. trainer on component 0 with gepa.service_url / reflection.base_url pointing at them
#   4. watch every component; the first one to end decides, the rest are stopped (bounded)
#   5. summary.json + a summary line; on "checkpointed" (exit 75, or a forwarded pre-emption signal)
#      `scontrol requeue` so the next attempt resumes from the checkpoint (checkpoint.resume=auto)
#
# SIGUSR1 (the --signal lead before the time limit, or `scancel --signal=USR1 --batch`) asks the trainer to
# checkpoint at its next phase boundary. SIGTERM is Slurm ending the job: after a SIGUSR1, or when the job's
# state is TIMEOUT or PREEMPTED, it is the time limit or a pre-emption arriving before the trainer finished, and
# the job is requeued (before anything else when Slurm is already killing the job: KillWait is short); otherwise
# (`scancel`, state CANCELLED) it is cancelled. See term_action.
#
#   CONFIG              run config YAML (required)
#   OVERRIDES           extra `key=value` config overrides, space separated (no spaces inside values)
#   RUN_DIR             run directory                                  [the config's logging.run_dir]
#   NODES               trainer nodes; checked against the allocation  [component 0's node count]
#   GEPA_RUN_DIR        GEPA service state (kept across requeues)      [$RUN_DIR/gepa_service]
#   REFLECTION_MODEL    model served for Self-Ref by component 2       [the config's model.path]
#   REFLECTION_SERVER   p2o (`p2o serve`, OpenAI-compatible gateway) | vllm (`vllm serve`)   [p2o]
#   REFLECTION_PORT     port of the reflection server on its node      [8000]
#   REFLECTION_GPU_MEMORY_UTILIZATION  vLLM's share of component 2's GPUs (`p2o serve` with rollout.engine=vllm)  [0.9]
#   GATEWAY_PORT        port of the trainer's policy gateway when the gateway token variable
#                       (rollout.gateway_token_env) is set: the GEPA service registers it as its `policy`
#                       endpoint, the only URL it sends that key to    [8001]
#   TRAINER_REFLECTION_PORT  likewise, the port of the Self-Ref server the trainer starts itself (no
#                       component 2; reflection.port), registered as the `reflection` endpoint   [8002]
#   ENDPOINT_TIMEOUT_S  seconds a service may take to answer /health   [600]
#   MAX_REQUEUES        give up requeueing after this many restarts    [20]
#
# A requeued job becomes eligible after Slurm's requeue delay (AuthInfo cred_expire, 120 s by default).

: "${ENDPOINT_TIMEOUT_S:=600}"
: "${MAX_REQUEUES:=20}"
: "${REFLECTION_SERVER:=p2o}"
: "${REFLECTION_PORT:=8000}"
: "${REFLECTION_GPU_MEMORY_UTILIZATION:=0.9}"
: "${GATEWAY_PORT:=8001}"
: "${TRAINER_REFLECTION_PORT:=8002}"

PREEMPT_SIGNAL=""
TERMINATED=0
FINISHED=0

on_usr1() {
    [[ $FINISHED == 1 ]] && return 0
    log "received SIGUSR1 (time limit or pre-emption ahead): asking the trainer to checkpoint"
    PREEMPT_SIGNAL=USR1
    signal_component USR1 trainer
}

on_term() {
    [[ $FINISHED == 1 ]] && return 0
    TERMINATED=1
    if [[ -n $PREEMPT_SIGNAL ]]; then
        log "received SIGTERM after SIG$PREEMPT_SIGNAL (the time limit or pre-emption came before the trainer stopped)"
    else
        log "received SIGTERM (job cancelled, timed out or pre-empted)"
    fi
    signal_component TERM trainer
}

job_state() {  # job_state: this job's state as scontrol reports it (first component), or nothing
    scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' | head -n 1
}

# term_action STATE PREEMPT_SIGNAL: what a SIGTERM means for the job; prints one of
#   cancel        the user cancelled it (scancel: state CANCELLED), or a TERM with no pre-emption signal before it
#   requeue_now   Slurm is ending the job (state TIMEOUT or PREEMPTED): requeue first, it kills us after KillWait
#   requeue       a TERM after SIGUSR1 while the job still runs (e.g. sent to the batch script by hand): let the
#                 trainer finish its checkpoint (bounded by STOP_TIMEOUT_S), then requeue
term_action() {
    local state=$1 preempt=$2
    case $state in
        CANCELLED) echo cancel ;;
        TIMEOUT | PREEMPTED | DEADLINE) echo requeue_now ;;
        *) if [[ -n $preempt ]]; then echo requeue; else echo cancel; fi ;;
    esac
}

snapshot_cluster() {  # sinfo / scontrol show job, appended per attempt
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) attempt ${SLURM_RESTART_COUNT:-0}"
        sinfo 2>&1
    } >>"$JOB_DIR/sinfo.txt"
    {
        echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) attempt ${SLURM_RESTART_COUNT:-0}"
        scontrol show job "$SLURM_JOB_ID" 2>&1
    } >>"$JOB_DIR/scontrol_job.txt"
}

# finish STATUS FAILED_COMPONENT REASON EXIT_CODE: stop what still runs, write the summary, exit.
finish() {
    local status=$1 failed=$2 reason=$3 code=$4
    FINISHED=1
    if [[ $status == requeued_now ]]; then  # Slurm kills this script after KillWait: requeue, then stop the rest
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            write_summary failed "" "$reason; scontrol requeue $SLURM_JOB_ID failed (was the job submitted with --requeue?)" 75
            stop_components "${COMP_NAMES[@]}"
            exit 75
        fi
        write_summary requeued "" "$reason" 0
        STOP_TIMEOUT_S=${STOP_TIMEOUT_S_ON_CANCEL:-20}
        stop_components "${COMP_NAMES[@]}"
        exit 0
    fi
    stop_components "${COMP_NAMES[@]}"
    if [[ $status == requeued ]]; then
        if ((${SLURM_RESTART_COUNT:-0} >= MAX_REQUEUES)); then
            write_summary failed trainer "$reason; not requeued: MAX_REQUEUES=$MAX_REQUEUES restarts reached" 75
            exit 75
        fi
        write_summary requeued "" "$reason" 0
        if ! scontrol requeue "$SLURM_JOB_ID"; then
            write_summary failed "" "$reason; scontrol requeue $SLURM_JOB_ID failed (was the job submitted with --requeue?)" 75
            exit 75
        fi
        exit 0
    fi
    write_summary "$status" "$failed" "$reason" "$code"
    exit "$code"
}

# start_gepa [GEPA_SERVE_ARGS...]: het group 1; the extra arguments register the endpoints the service may
# send credentials to (--endpoint / --endpoint-key-env): the service never takes a key from a job.
start_gepa() {
    local node out
    node=$(first_host "$SLURM_JOB_NODELIST_HET_GROUP_1")
    out=$JOB_DIR/endpoints/gepa.url
    mkdir -p "$GEPA_RUN_DIR"
    local cargs=() prefix=()
    mapfile -t cargs < <(container_srun_args)
    mapfile -t prefix < <(container_exec_prefix)
    start_component gepa "$JOB_DIR/gepa.log" "$node" \
        srun --het-group=1 --nodes=1 --ntasks=1 --export=ALL "${cargs[@]}" "${prefix[@]}" \
        "$PYTHON" -m p2o.cli gepa-serve --host 0.0.0.0 --port 0 --run-dir "$GEPA_RUN_DIR" --endpoint-file "$out" "$@"
}

# gepa_endpoint_args POLICY_URL REFLECTION_URL GATEWAY_TOKEN_ENV: the endpoint flags of start_gepa, one per line.
gepa_endpoint_args() {
    local policy=$1 reflection=$2 key_env=$3 name url
    for name in policy reflection; do
        [[ $name == policy ]] && url=$policy || url=$reflection
        [[ -n $url ]] || continue
        printf '%s\n' --endpoint "$name=$url"
        if [[ -n $key_env && -n ${!key_env:-} ]]; then printf '%s\n' --endpoint-key-env "$name=$key_env"; fi
    done
}

start_reflection() {  # het group 2: the frozen initial model behind an OpenAI-compatible server
    local node out
    node=$(first_host "$SLURM_JOB_NODELIST_HET_GROUP_2")
    out=$JOB_DIR/endpoints/reflection.url
    local cargs=() prefix=() server=()
    mapfile -t cargs < <(container_srun_args)
    mapfile -t prefix < <(container_exec_prefix)
    if [[ $REFLECTION_SERVER == vllm ]]; then
        server=(vllm serve "$REFLECTION_MODEL")
    else
        # sized from the run config's reflection.* (meta-prompts up to reflection.context_tokens); the config as
        # the trainer gets it (an external Self-Ref server), with this node's share of its own GPUs
        server=("$PYTHON" -m p2o.cli serve --reflection --config "$JOB_DIR/config.yaml" --model "$REFLECTION_MODEL"
            reflection.server=external "reflection.base_url=http://$node:$REFLECTION_PORT"
            "reflection.gpu_memory_utilization=$REFLECTION_GPU_MEMORY_UTILIZATION")
    fi
    # The server listens on a fixed port; the wrapper publishes the URL, GET /health gates its use.
    start_component reflection "$JOB_DIR/reflection.log" "$node" \
        srun --het-group=2 --nodes=1 --ntasks=1 --export=ALL "${cargs[@]}" bash -c \
        'echo "http://$(hostname):$1" >"$2"; shift 2; exec "$@"' p2o-reflection "$REFLECTION_PORT" "$out" \
        "${prefix[@]}" "${server[@]}" --served-model-name reflection --host 0.0.0.0 --port "$REFLECTION_PORT"
}

# await NAME: wait for a started service's endpoint and set AWAITED_URL; on failure end the job naming
# the service.
await() {
    local name=$1 node rc=0
    node=${COMP_NODES[$name]}
    AWAITED_URL=$(wait_endpoint "$name" "$JOB_DIR/endpoints/$name.url" "$node" "$ENDPOINT_TIMEOUT_S" "${COMP_PID[$name]}") || rc=$?
    if ((rc != 0)); then
        reap_component "$name"
        local why="did not answer /health within ${ENDPOINT_TIMEOUT_S}s"
        [[ -n ${COMP_RC[$name]:-} ]] && why="exited during start-up with $(describe_rc "${COMP_RC[$name]}")"
        finish failed "$name" "$name $why on $node; last log line: $(last_log_line "$name")" \
            "$(failure_code "${COMP_RC[$name]:-1}")"
    fi
    log "$name is up at $AWAITED_URL"
}

failure_code() {  # the job's exit code for a failed component's: its own, unless 0 or 75
    local rc=$1
    if ((rc == 0 || rc == 75)); then echo 1; else echo "$rc"; fi
}

signal_trainer() {  # signal_trainer SIGNAL: to the trainer's ranks only (see lib/launch.sh)
    signal_trainer_ranks "$1" "$NODES" "$PID_DIR"
}

setup_job_dir() {  # JOB_DIR, JOB_LOG and the per-attempt snapshots
    JOB_DIR=$RUN_DIR/slurm/$SLURM_JOB_ID
    PID_DIR=$JOB_DIR/pids
    mkdir -p "$JOB_DIR/endpoints" "$PID_DIR" || die "cannot create the job directory $JOB_DIR"
    rm -f "$JOB_DIR"/endpoints/* "$PID_DIR"/*      # a requeued attempt must not see stale endpoints or PIDs
    JOB_LOG=$JOB_DIR/job.log
    log "job $SLURM_JOB_ID attempt ${SLURM_RESTART_COUNT:-0} on ${SLURMD_NODENAME:-$(hostname)}: run dir $RUN_DIR"
    snapshot_cluster
}

run_training_job() {
    JOB_STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    trap on_usr1 USR1
    trap on_term TERM INT
    [[ -n ${CONFIG:-} ]] || die "CONFIG is not set: export CONFIG=path/to/run.yaml before submitting"
    CONFIG=$(abspath "$CONFIG")
    [[ -f $CONFIG ]] || die "CONFIG=$CONFIG: no such file (relative paths start at the submit directory)"
    local overrides=()
    read -ra overrides <<<"${OVERRIDES:-}"

    # Everything the scripts need from the run config, validated once (a ConfigError names the key).
    local values=() err
    err=$(mktemp)
    mapfile -t values < <(p2o_python "$P2O_SLURM_DIR/lib/config_query.py" "$CONFIG" "${overrides[@]}" \
        --get logging.run_dir parallel.tp parallel.pp model.path gepa.token_env p2o.enabled \
        rollout.gateway_token_env 2>"$err"; echo "rc=$?")
    if [[ ${values[-1]} != rc=0 ]]; then
        local why
        why="invalid run config $CONFIG (OVERRIDES=${OVERRIDES:-}): $(grep -v '^[[:space:]]*$' "$err" | tail -n 1)"
        rm -f "$err"
        [[ -n ${RUN_DIR:-} ]] || die "$why"
        RUN_DIR=$(abspath "$RUN_DIR")
        setup_job_dir
        finish failed config "$why" 2
    fi
    rm -f "$err"
    local tp=${values[1]} pp=${values[2]} token_env=${values[4]} p2o_enabled=${values[5]} gateway_token_env=${values[6]}
    RUN_DIR=$(abspath "${RUN_DIR:-${values[0]}}")
    : "${GEPA_RUN_DIR:=$RUN_DIR/gepa_service}"
    : "${REFLECTION_MODEL:=${values[3]}}"
    setup_job_dir
    p2o_python "$P2O_SLURM_DIR/lib/config_query.py" "$CONFIG" "${overrides[@]}" "logging.run_dir=$RUN_DIR" \
        --yaml "$JOB_DIR/config.yaml" || finish failed config "could not write the resolved config" 2

    # Trainer layout: nodes and ranks of component 0, checked against TP x PP.
    local alloc_nodes=${SLURM_JOB_NUM_NODES_HET_GROUP_0:-${SLURM_JOB_NUM_NODES:-1}}
    NODES=${NODES:-$alloc_nodes}
    ((NODES == alloc_nodes)) ||
        finish failed config "NODES=$NODES but component 0 of the job has $alloc_nodes node(s); submit with NODES set (bash $SCRIPT_NAME) or sbatch --nodes=$NODES" 2
    GPUS_PER_NODE=${GPUS_PER_NODE:-$(detect_gpus_per_node)}
    local per_node=$GPUS_PER_NODE
    ((per_node > 0)) || per_node=$CPU_PROCS_PER_NODE
    local layout
    layout=$(check_layout "$NODES" "$per_node" "$tp" "$pp") || finish failed config "$layout" 2
    log "trainer: $NODES node(s) x $per_node rank(s) ($( ((GPUS_PER_NODE > 0)) && echo GPU || echo 'CPU, gloo')), $layout, launcher $LAUNCHER"
    set_network_env "$GPUS_PER_NODE"
    set_cache_env

    # Per-job token, shared with the services and the trainer through the environment only.
    export "${token_env}=$(ensure_token "$JOB_DIR/token")"

    local master_addr master_port
    master_addr=$(first_host "$SLURM_JOB_NODELIST_HET_GROUP_0")
    [[ -n $master_addr ]] || master_addr=$(first_host "$SLURM_JOB_NODELIST")
    master_port=${MASTER_PORT:-$((20000 + (SLURM_JOB_ID % 10000) + ${SLURM_RESTART_COUNT:-0}))}

    # The reflection server comes up first: the GEPA service is started knowing the endpoints it may call
    # with credentials. When the gateways need a key, the trainer's gateway is pinned to GATEWAY_PORT of the
    # first trainer node so that the service can register it (without a key it keeps a free port).
    # Without component 2 the trainer serves Self-Ref itself; with a key its server is pinned likewise.
    local groups=${SLURM_HET_SIZE:-1} gepa_url="" reflection_url="" gepa_args=() policy_endpoint=""
    local reflection_endpoint=""
    if [[ -n $gateway_token_env && -n ${!gateway_token_env:-} ]]; then
        policy_endpoint="http://$master_addr:$GATEWAY_PORT/v1"
        ((groups >= 3)) || reflection_endpoint="http://$master_addr:$TRAINER_REFLECTION_PORT/v1"
    fi
    if ((groups >= 3)); then start_reflection; await reflection; reflection_url=$AWAITED_URL; fi
    if ((groups >= 2)); then
        mapfile -t gepa_args < <(gepa_endpoint_args "$policy_endpoint" "${reflection_url:-$reflection_endpoint}" \
            "$gateway_token_env")
        start_gepa "${gepa_args[@]}"
        await gepa; gepa_url=$AWAITED_URL
    fi
    if ((groups < 2)) && [[ $p2o_enabled == True ]]; then
        log "warning: P2O is on but the job has no GEPA component; the trainer will start its own service"
    fi
    [[ -n $PREEMPT_SIGNAL ]] && finish requeued "" "pre-empted (SIG$PREEMPT_SIGNAL) before the trainer started" 0
    if ((TERMINATED)); then
        [[ $(term_action "$(job_state)" "") == requeue_now ]] &&
            finish requeued_now "" "SIGTERM (time limit or pre-emption) before the trainer started" 0
        finish cancelled "" "cancelled before the trainer started" 143
    fi

    export MASTER_ADDR=$master_addr MASTER_PORT=$master_port
    atomic_write "$JOB_DIR/endpoints.json" <<EOF
{"gepa": $(json_str "$gepa_url"), "reflection": $(json_str "$reflection_url"), "trainer_rendezvous": $(json_str "$master_addr:$master_port")}
EOF

    local train_args=(train --config "$CONFIG")
    [[ -n $gepa_url ]] && train_args+=("gepa.service_url=$gepa_url" "rollout.gateway_host=$master_addr")
    [[ -n $gepa_url && -n $policy_endpoint ]] && train_args+=("rollout.gateway_port=$GATEWAY_PORT")
    [[ -n $gepa_url && -n $reflection_endpoint ]] && train_args+=("reflection.port=$TRAINER_REFLECTION_PORT")
    # The reflection component serves the frozen initial model: Self-Ref at an external endpoint. Without it
    # the trainer serves the frozen model itself (reflection.server: a process of its own next to a vLLM policy
    # on rank 0's GPU, with reflection.gpu_memory_utilization of it; see docs/gpu.md).
    [[ -n $reflection_url ]] && train_args+=(reflection.server=external "reflection.base_url=$reflection_url" reflection.model=reflection)
    train_args+=("${overrides[@]}" "logging.run_dir=$RUN_DIR")
    local cmd=()
    mapfile -d '' -t cmd < <(trainer_srun_cmd "$NODES" "$per_node" "$master_addr" "$master_port" \
        "$SLURM_JOB_ID-${SLURM_RESTART_COUNT:-0}" "$PID_DIR" -- "${train_args[@]}")
    COMP_SIGNALLER[trainer]=signal_trainer
    start_component trainer "$JOB_DIR/trainer.log" "${SLURM_JOB_NODELIST_HET_GROUP_0:-$SLURM_JOB_NODELIST}" "${cmd[@]}"
    [[ -n $PREEMPT_SIGNAL ]] && signal_component USR1 trainer   # a signal that came while starting

    supervise_until_done
}

# Watch all components; the first to end decides how the job ends.
supervise_until_done() {
    local rc name
    while :; do
        wait_any "${COMP_NAMES[@]}"
        if ((TERMINATED)); then
            local state action
            state=$(job_state)
            action=$(term_action "$state" "$PREEMPT_SIGNAL")
            log "SIGTERM with job state ${state:-unknown}${PREEMPT_SIGNAL:+ after SIG$PREEMPT_SIGNAL}: $action"
            case $action in
                requeue_now) finish requeued_now "" "SIGTERM, job state $state${PREEMPT_SIGNAL:+ after SIG$PREEMPT_SIGNAL}: requeued; the next attempt resumes from the latest complete checkpoint" 0 ;;
                requeue) finish requeued "" "SIGTERM after SIG$PREEMPT_SIGNAL: requeued once the trainer checkpointed (or after STOP_TIMEOUT_S=$STOP_TIMEOUT_S s)" 0 ;;
            esac
            STOP_TIMEOUT_S=${STOP_TIMEOUT_S_ON_CANCEL:-20}
            finish cancelled "" "cancelled (SIGTERM); the trainer was asked to checkpoint" 143
        fi
        [[ -z $EXITED ]] && continue
        name=$EXITED
        rc=${COMP_RC[$name]}
        if [[ $name == trainer ]]; then
            if ((rc == 0)); then
                finish success "" "training finished" 0
            elif ((rc == 75)) || [[ -n $PREEMPT_SIGNAL ]]; then
                finish requeued "" "trainer checkpointed ($(describe_rc "$rc")${PREEMPT_SIGNAL:+ after SIG$PREEMPT_SIGNAL}); requeued to resume" 0
            fi
            finish failed trainer "trainer failed with $(describe_rc "$rc") on ${COMP_NODES[trainer]}; last log line: $(last_log_line trainer)" \
                "$(failure_code "$rc")"
        fi
        finish failed "$name" "$name ended while the trainer was running, $(describe_rc "$rc") on ${COMP_NODES[$name]}; last log line: $(last_log_line "$name")" \
            "$(failure_code "$rc")"
    done
}
