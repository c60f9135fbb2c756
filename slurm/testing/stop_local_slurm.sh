#!/usr/bin/env bash
# Stop the local test cluster started by start_local_slurm.sh: cancel jobs left, stop the slurmd,
# slurmctld and munged daemons found through its own PID files (nothing else), and remove the
# /etc/hosts lines and /etc/slurm/slurm.conf it wrote. Stopping a stopped cluster does nothing.
#
# Settings (environment): LOCAL_SLURM_DIR, as for the start script  [/var/tmp/p2o-local-slurm]
set -uo pipefail

DIR=${LOCAL_SLURM_DIR:-/var/tmp/p2o-local-slurm}
MARKER="# p2o-local-slurm"

say() { echo "stop_local_slurm: $*" >&2; }

if [[ -d $DIR && ${LOCAL_SLURM_LOCKED:-0} != 1 ]]; then   # the start script holds the lock when it calls us
    exec 8>"$DIR/lock"
    flock -w 300 8 || { say "timed out waiting for $DIR/lock"; exit 1; }
fi

alive() {  # PID exists and is not a zombie (daemons may be re-parented to a PID 1 that reaps late)
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

stop_pidfile() {  # stop_pidfile FILE: TERM, wait up to 10 s, then KILL
    local file=$1 pid i
    [[ -s $file ]] || { rm -f "$file"; return 0; }
    pid=$(<"$file")
    if [[ $pid =~ ^[0-9]+$ ]] && alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && { say "$(basename "$file" .pid) (pid $pid) ignored TERM; killing"; kill -KILL "$pid" 2>/dev/null; }
    fi
    rm -f "$file"
}

if [[ -s $DIR/etc/slurm.conf ]] && [[ -s $DIR/run/slurmctld.pid ]] && alive "$(<"$DIR/run/slurmctld.pid")"; then
    export SLURM_CONF=$DIR/etc/slurm.conf
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for ((i = 0; i < 50; i++)); do [[ -z $(squeue -h -t R,CG 2>/dev/null) ]] && break; sleep 0.2; done
    fi
fi

shopt -s nullglob
for f in "$DIR"/run/slurmd-*.pid; do stop_pidfile "$f"; done
stop_pidfile "$DIR/run/slurmctld.pid"
stop_pidfile "$DIR/run/munged.pid"

if grep -q "$MARKER" /etc/hosts 2>/dev/null; then
    # /etc/hosts may be a bind mount: rewrite it in place instead of replacing the file.
    kept=$(grep -v "$MARKER" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
fi
if [[ -e /etc/slurm/slurm.conf ]] && grep -q "^$MARKER" /etc/slurm/slurm.conf; then
    rm -f /etc/slurm/slurm.conf
fi
exit 0
