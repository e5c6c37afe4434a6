# lib.sh: what the benchmark scripts share (run.sh, crash.sh, latency.sh,
# transport.sh), sourced after BENCH_TAG is set:
#   say, die        a "[TAG] ..." line on stderr; die exits 1
#   cpu_busy        percent of all CPUs busy during one second (other
#                   people's load skews a benchmark on a small machine; it
#                   is printed with the results)
#   bench_track_processes NAME
#                   WORK (a fresh /tmp/khost-NAME.* folder) and PIDS: every
#                   process a script starts goes into PIDS and is ended by
#                   pid on exit, errors and signals included (SIGTERM, then
#                   SIGKILL after 5 s); WORK is kept with BENCH_KEEP=1 or on
#                   failure
#   forget PID      drop a pid that has been waited for
# shellcheck shell=bash

say() { printf '[%s] %s\n' "${BENCH_TAG:-bench}" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

cpu_busy() {
    local a b
    a=$(head -1 /proc/stat)
    sleep 1
    b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x); split(b, y); t = 0
        for (i = 2; i <= n; i++) t += y[i] - x[i]
        idle = (y[5] - x[5]) + (y[6] - x[6])
        printf "%.0f", (t > 0 ? 100 * (t - idle) / t : 0) }'
}

bench_cleanup() {
    local st=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [[ ${BENCH_KEEP:-0} == 1 || $st != 0 ]]; then
        say "logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$st"
}

bench_track_processes() {
    WORK=$(mktemp -d "/tmp/khost-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}
