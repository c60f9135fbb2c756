# shellcheck shell=bash
# Per-job token and run-time endpoint discovery. Sourced after common.sh.
#
# Services bind to 0.0.0.0 on port 0 and write "http://host:port" to an endpoint file in the job
# directory once they listen; the batch script waits for that file and for GET /health before it
# starts anything that needs the service. The token never appears on a command line or in a log:
# it lives in a 0600 file and reaches the components through the environment.

ensure_token() {  # ensure_token FILE: create a random hex token (mode 0600) unless FILE exists; print it
    local file=$1
    if [[ ! -s $file ]]; then
        (
            umask 077
            head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file.tmp.$$"
            mv -f "$file.tmp.$$" "$file"
        )
    fi
    chmod 600 "$file"
    cat "$file"
}

# fix_url URL HOST: "host:port" or "http://host:port" -> "http://host:port", with a wildcard bind
# address (0.0.0.0, [::], empty) replaced by HOST, the node other nodes reach the service on.
fix_url() {
    local url=$1 host=$2
    [[ $url == *://* ]] || url=http://$url
    case $url in
        http://0.0.0.0:* | http://\[::\]:* | http://:*) echo "http://$host:${url##*:}" ;;
        *) echo "$url" ;;
    esac
}

http_ok() {  # http_ok URL: true when GET URL answers 2xx within 5 s (bash only: no curl needed)
    local rest=${1#http://} hostport path host port code
    hostport=${rest%%/*}
    path=/${rest#*/}
    [[ $rest == */* ]] || path=/
    host=${hostport%:*}
    port=${hostport##*:}
    exec 9<>"/dev/tcp/$host/$port" 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&9
    read -r -t 5 _ code _ <&9 || code=000
    exec 9<&-
    [[ $code == 2?? ]]
}

# wait_endpoint NAME FILE HOST TIMEOUT_S PID: wait until FILE holds a URL that answers /health.
# Prints the URL (its host fixed up to HOST). Fails early when PID (the component's srun) exits.
wait_endpoint() {
    local name=$1 file=$2 host=$3 timeout_s=$4 pid=$5 url=""
    local deadline=$((SECONDS + timeout_s))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before publishing its endpoint"
            return 2
        fi
        if [[ -s $file ]]; then
            url=$(fix_url "$(head -n 1 "$file" | tr -d '[:space:]')" "$host")
            if http_ok "${url%/}/health"; then
                echo "$url"
                return 0
            fi
        fi
        sleep 1
    done
    log "$name did not answer ${url:-(no endpoint file $file)}/health within ${timeout_s}s"
    return 1
}
