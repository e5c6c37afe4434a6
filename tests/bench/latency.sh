#!/usr/bin/env bash
# Latency benchmark (issue 14): end-to-end delay from the send time to the
# handler call at fixed rates, khost (latency_plugin.so, 1 and 2 workers)
# against a plain librdkafka group consumer doing the same per message
# (bench_latency_ref), on ONE standalone mock cluster. Method and
# figures: tests/bench/README.md, "Transport ceiling and latency".
#
#   bash tests/bench/latency.sh      # about 3.5 minutes with the defaults
#
# Each run: start the consumer (a fresh group on a fresh topic of its own,
# auto.offset.reset=latest), wait for its assignment, produce RATE msg/s
# for WARMUP + SECONDS with bench_produce_rate (send time in us at the
# start of each value), wait 1 s, stop the consumer, drop the samples sent
# in the first WARMUP seconds, and take p50/p99/max of the rest. A message
# produced but not handled by then counts as "lost" (above any measured
# delay). Contenders run one after another, their order rotating from
# round to round; the table shows the median over the rounds with the
# min-max.
#
# Environment (all optional):
#   BENCH_REPS           rounds (default 3)
#   BENCH_RATES          msg/s (default "5000 50000")
#   BENCH_SECONDS        measured seconds per run (default 5)
#   BENCH_WARMUP_S       seconds produced first and discarded (default 1)
#   BENCH_FETCH_WAIT_MS  fetch.wait.max.ms, the same on both (default 10)
#   BENCH_PACE_US        the producer wakes at most every N us and sends what
#                        is due in a burst (default 1000; 0: a wake per
#                        message, which took most of a core at 50k msg/s)
#   BENCH_WORKERS        khost worker counts (default "1 2")
#   BENCH_PARTITIONS     partitions per topic (default 4)
#   BENCH_BUILD_DIR      build directory (default <repo>/build)
#   BENCH_NO_BUILD=1     do not build, use the binaries as they are
#   BENCH_KEEP=1         keep the work directory with every log and sample
#
# Exit status: 0 when the benchmark ran (whatever the numbers), 1 when it
# could not run (build failure, a contender failed or timed out).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$ROOT/build}
REPS=${BENCH_REPS:-3}
RATES=${BENCH_RATES:-5000 50000}
SECS=${BENCH_SECONDS:-5}
WARM=${BENCH_WARMUP_S:-1}
FW=${BENCH_FETCH_WAIT_MS:-10}
export BENCH_PACE_US=${BENCH_PACE_US:-1000} # read by bench_produce_rate
WORKERS=${BENCH_WORKERS:-1 2}
PARTS=${BENCH_PARTITIONS:-4}
READY_TIMEOUT_S=30 # consumer start to assignment (the mock's join takes 3 s)
TAIL_S=1           # producer end to consumer stop
LOST=99999         # the "delay" of a message never handled, in ms

BENCH_TAG=latency
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# ---- build ----
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
        say "configuring $BUILD"
        cmake -S "$ROOT" -B "$BUILD" -DKHOST_WERROR=ON >/dev/null ||
            die "cmake configure failed"
    fi
    say "building khost, latency_plugin and the latency tools in $BUILD"
    cmake --build "$BUILD" -j2 --target khost latency_plugin bench_produce_rate \
        bench_latency_ref >"$BUILD/latency-build.log" 2>&1 || {
        tail -20 "$BUILD/latency-build.log" >&2
        die "build failed (log: $BUILD/latency-build.log)"
    }
fi
KHOST=$BUILD/khost
BIN=$BUILD/bench
PLUGIN=$BIN/latency_plugin.so
for f in "$KHOST" "$BIN/bench_produce_rate" "$BIN/bench_latency_ref"; do
    [[ -x $f ]] || die "missing $f (the bench targets need the test tree configured)"
done
[[ -f $PLUGIN ]] || die "missing $PLUGIN"

# ---- processes: every one we start is tracked by pid and ended on exit ----
bench_track_processes latency

# stop_wait PID WHAT: SIGTERM, then wait up to 20 s, else SIGKILL (an error).
stop_wait() {
    local rc=0
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 200); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$1" 2>/dev/null; then
        kill -KILL "$1" 2>/dev/null || true
        wait "$1" 2>/dev/null || true
        forget "$1"
        die "$2 did not stop within 20 s of SIGTERM"
    fi
    wait "$1" || rc=$?
    forget "$1"
    [[ $rc == 0 ]] || die "$2 exited $rc"
}

contenders=(reference)
for w in $WORKERS; do contenders+=("khost:$w"); done

# ---- the mock cluster: one topic per run ----
# A fresh topic each run: the mock broker slows down as a partition's log
# grows (with one topic per rate the 2nd round ran seconds behind).
topic_args=()
for r in $(seq "$REPS"); do
    for rate in $RATES; do
        for c in "${contenders[@]}"; do
            topic_args+=(--topic "lat-$rate-${c/:/}-r$r:$PARTS")
        done
    done
done
for attempt in 1 2 3; do
    "$KHOST" mock-cluster --brokers 1 "${topic_args[@]}" \
        --bootstrap-file "$WORK/bootstrap" >"$WORK/mock.out" 2>"$WORK/mock.err" &
    MOCK=$!
    PIDS+=("$MOCK")
    for _ in $(seq 100); do
        [[ -s $WORK/bootstrap ]] && break
        kill -0 "$MOCK" 2>/dev/null || die "mock cluster exited: $(cat "$WORK/mock.err")"
        sleep 0.05
    done
    [[ -s $WORK/bootstrap ]] && break
    say "mock cluster not up after 5 s (attempt $attempt), restarting it"
    kill -KILL "$MOCK" 2>/dev/null || true
    wait "$MOCK" 2>/dev/null || true
    forget "$MOCK"
done
[[ -s $WORK/bootstrap ]] || die "mock cluster did not start"
BOOT=$(cat "$WORK/bootstrap")
say "mock cluster at $BOOT (pid $MOCK); $REPS round(s), rates: $RATES msg/s," \
    "${WARM} s warm-up + ${SECS} s measured, fetch.wait.max.ms=$FW"

# kv KEY LINE: the value of KEY=VALUE in LINE
kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $2"; }

# wait_for FILE REGEX PID WHAT: until FILE has a line matching REGEX.
wait_for() {
    local i
    for i in $(seq $((READY_TIMEOUT_S * 20))); do
        grep -Eq "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "$4 exited before it was ready: $(tail -3 "$1")"
        sleep 0.05
    done
    die "$4 not ready within $READY_TIMEOUT_S s"
}

# tree_ticks PID: CPU clock ticks (utime + stime) of PID and of its
# children (khost's workers), from every /proc/N/stat (no procps needed);
# 0 for a process that is gone.
tree_ticks() {
    # getline, not awk's file list: a process may be gone by the time its
    # file is read, which must not end the scan.
    awk -v pid="$1" 'BEGIN {
        for (i = 1; i < ARGC; i++) {
            if ((getline line < ARGV[i]) > 0) {
                split(line, g, " "); sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
                if (g[1] == pid || f[2] == pid) t += f[12] + f[13]
            }
            close(ARGV[i])
        }
        print t + 0 }' /proc/[0-9]*/stat
}
# busy_ticks: "BUSY TOTAL" ticks of all CPUs so far (/proc/stat).
busy_ticks() {
    awk 'NR == 1 { t = 0; for (i = 2; i <= NF; i++) t += $i
                   print t - $5 - $6, t; exit }' /proc/stat
}
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)

# produce TOPIC RATE TAG CONSUMER_PID: the load; prints the producer's
# start_us and the number of messages sent, then the share of the machine
# (% of all CPUs) over the production that the consumer (with its
# workers), the mock broker, the producer and everything else took.
produce() {
    local out c0 c1 m0 m1 b0 b1
    c0=$(tree_ticks "$4")
    m0=$(tree_ticks "$MOCK")
    b0=$(busy_ticks)
    out=$("$BIN/bench_produce_rate" "$BOOT" "$1" "$PARTS" "$2" \
        $((WARM + SECS)) 2>"$WORK/$3.produce.err") ||
        die "bench_produce_rate failed: $out $(tail -3 "$WORK/$3.produce.err")"
    c1=$(tree_ticks "$4")
    m1=$(tree_ticks "$MOCK")
    b1=$(busy_ticks)
    echo "$out" >"$WORK/$3.produce"
    [[ $(kv failed "$out") == 0 ]] || die "producer: $out"
    awk -v s="$(kv start_us "$out")" -v n="$(kv sent "$out")" -v c="$((c1 - c0))" \
        -v m="$((m1 - m0))" -v p="$(kv cpu_s "$out")" -v b0="$b0" -v b1="$b1" \
        -v hz="$HZ" 'BEGIN {
        split(b0, x, " "); split(b1, y, " "); tot = y[2] - x[2]; busy = y[1] - x[1]
        if (tot <= 0) tot = 1
        pt = p * hz
        printf "%s %s %.0f %.0f %.0f %.0f\n", s, n, 100 * c / tot, 100 * m / tot,
               100 * pt / tot, 100 * (busy - c - m - pt) / tot }'
}

# stats TAG "START_US SENT CPU..." FILE...: "P50_MS P99_MS MAX_MS SAMPLES
# LOST CPU..." of the samples sent at or after START_US + WARM seconds.
# LOST = SENT - every sample (warm-up included): messages not handled by
# the stop. They rank above every measured delay, as $LOST ms. CPU...:
# produce's shares, passed through.
stats() {
    local tag=$1 cut sent lost cpu
    read -r cut sent cpu <<<"$2"
    cut=$((cut + WARM * 1000000))
    shift 2
    lost=$(awk -v sent="$sent" '$1 !~ /^#/ { n++ } END { print sent - n }' "$@")
    awk -v cut="$cut" '$1 !~ /^#/ && $1 >= cut { print $2 }' "$@" |
        sort -n >"$WORK/$tag.sorted"
    awk -v lost="$lost" -v big="$LOST" '{ v[NR] = $1 / 1000 } END {
        n = NR + (lost > 0 ? lost : 0)
        if (!n) { print "- - - 0 0"; exit }
        for (i = NR + 1; i <= n; i++) v[i] = big
        i50 = int(0.50 * n); if (i50 < 0.50 * n) i50++
        i99 = int(0.99 * n); if (i99 < 0.99 * n) i99++
        printf "%.3f %.3f %.3f %d %d ", v[i50], v[i99], v[n], NR, lost
    }' "$WORK/$tag.sorted"
    echo "$cpu"
    [[ ${BENCH_KEEP:-0} == 1 ]] || rm -f "$WORK/$tag.sorted"
}

# Results: one line per run in $WORK/results:
# RATE CONTENDER ROUND P50 P99 MAX SAMPLES LOST CONSUMER% MOCK% PRODUCER% OTHERS%
record() { echo "$*" >>"$WORK/results"; }

run_ref() { # ROUND RATE
    local tag=ref-$2-r$1 topic=lat-$2-reference-r$1 pid start st
    "$BIN/bench_latency_ref" "$BOOT" "$topic" "lat-$tag-$$" "$FW" \
        "$WORK/$tag.samples" >"$WORK/$tag.out" 2>"$WORK/$tag.err" &
    pid=$!
    PIDS+=("$pid")
    wait_for "$WORK/$tag.out" '^ASSIGNED n=[1-9]' "$pid" "bench_latency_ref"
    sleep 0.5 # the "latest" offset lookup and the first fetch
    start=$(produce "$topic" "$2" "$tag" "$pid")
    sleep "$TAIL_S"
    stop_wait "$pid" bench_latency_ref
    st=$(stats "$tag" "$start" "$WORK/$tag.samples")
    record "$2" reference "$1" "$st"
    say "  reference: p50/p99/max ms, samples, lost, CPU% consumer/mock/producer/others: $st"
}

run_khost() { # ROUND RATE WORKERS
    local tag=khost-w$3-$2-r$1 topic=lat-$2-khost$3-r$1 ini pid start st
    ini=$WORK/$tag.ini
    cat >"$ini" <<EOF
[host]
brokers = $BOOT
[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500
fetch.wait.max.ms = $FW
auto.offset.reset = latest
[pipeline.lat]
topics = $topic
group = lat-$tag-$$
plugin = $PLUGIN
workers = $3
handler_timeout_ms = 0
[pipeline.lat.config]
out = $WORK/$tag.samples
EOF
    "$KHOST" run -c "$ini" 2>"$WORK/$tag.log" &
    pid=$!
    PIDS+=("$pid")
    wait_for "$WORK/$tag.log" 'assigned [1-9][0-9]* partition' "$pid" "khost run"
    # Every worker READY too (they start long before the 3 s join ends).
    wait_for "$WORK/$tag.log" "worker=$(($3 - 1)) pid=[0-9]+ ready: plugin" "$pid" "khost run"
    sleep 0.5
    start=$(produce "$topic" "$2" "$tag" "$pid")
    sleep "$TAIL_S"
    stop_wait "$pid" "khost run"
    local files=()
    for ((w = 0; w < $3; w++)); do
        [[ -f $WORK/$tag.samples.w$w ]] || die "no samples from worker $w ($WORK/$tag.samples.w$w)"
        files+=("$WORK/$tag.samples.w$w")
    done
    st=$(stats "$tag" "$start" "${files[@]}")
    record "$2" "khost-w$3" "$1" "$st"
    say "  khost $3 worker(s): p50/p99/max ms, samples, lost, CPU% consumer/mock/producer/others: $st"
}

BUSY_BEFORE=$(cpu_busy)
[[ $BUSY_BEFORE -lt 15 ]] ||
    say "warning: the machine is already ${BUSY_BEFORE}% busy; results will be noisy"
t_start=$SECONDS
for r in $(seq "$REPS"); do
    for rate in $RATES; do
        say "round $r, $rate msg/s"
        k=${#contenders[@]}
        for i in $(seq 0 $((k - 1))); do
            c=${contenders[$(((i + r - 1) % k))]}
            case $c in
            reference) run_ref "$r" "$rate" ;;
            khost:*) run_khost "$r" "$rate" "${c#khost:}" ;;
            esac
        done
    done
done
BUSY_AFTER=$(cpu_busy)

# ---- the table: medians over the rounds, min-max ----
# agg RATE NAME COLUMN: "MEDIAN MIN MAX" of that column over the rounds
agg() {
    awk -v r="$1" -v n="$2" -v c="$3" '$1 == r && $2 == n && $c != "-" { print $c }' \
        "$WORK/results" | sort -g | awk '{ v[NR] = $1 } END {
            if (!NR) { print "- - -"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR] }'
}
cell() { # "MEDIAN MIN MAX" -> "M (min-max)"; $LOST ms reads "lost"
    awk -v s="$1" -v big="$LOST" 'function f(x) { return x >= big ? "lost" : sprintf("%.2f", x) }
        BEGIN { split(s, a, " ")
        if (a[1] == "-") print "-"; else printf "%s (%s-%s)", f(a[1]), f(a[2]), f(a[3]) }'
}

echo
echo "khost latency benchmark: send time -> handler call, $PARTS partitions, 1 mock broker,"
echo "$(nproc) CPU(s), ${WARM} s warm-up + ${SECS} s measured per run, fetch.wait.max.ms=$FW,"
echo "producer pacing: $BENCH_PACE_US us (0: a wake per message),"
echo "median of $REPS round(s) (min-max), librdkafka $(pkg-config --modversion rdkafka 2>/dev/null || echo '?')"
echo "other load: ${BUSY_BEFORE}% CPU busy before, ${BUSY_AFTER}% after the run"
echo
echo "| rate/s | contender | p50 ms | p99 ms | max ms | samples | lost | CPU consumer | mock | producer | others |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for rate in $RATES; do
    for c in "${contenders[@]}"; do
        case $c in
        reference) name=reference label="reference (librdkafka)" ;;
        khost:*)
            name=khost-w${c#khost:}
            label="khost, ${c#khost:} worker$([[ ${c#khost:} == 1 ]] || echo s)"
            ;;
        esac
        s=$(agg "$rate" "$name" 7)
        l=$(awk -v r="$rate" -v n="$name" '$1 == r && $2 == n { t += $8 } END { print t + 0 }' \
            "$WORK/results")
        pc=()
        for col in 9 10 11 12; do
            v=$(agg "$rate" "$name" "$col")
            pc+=("${v%% *}%")
        done
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$rate" "$label" \
            "$(cell "$(agg "$rate" "$name" 4)")" "$(cell "$(agg "$rate" "$name" 5)")" \
            "$(cell "$(agg "$rate" "$name" 6)")" "${s%% *}" "$l" "${pc[@]}"
    done
done
echo
echo "samples: median per run (sent at or after the warm-up); lost: all rounds together,"
echo "messages not handled ${TAIL_S} s after the producer ended (they rank as the largest delays)."
echo "CPU: median share of the whole machine ($NCPU CPUs = 100%) while producing: the consumer"
echo "(khost: host process and workers), the mock broker, the producer, and everything else"
echo "(other people's load; this script's own tools are a fraction of 1%)."
echo "target: khost p50 within 1 ms of the reference's, p99 within 5 ms (medians over the rounds):"
for rate in $RATES; do
    ref50=$(agg "$rate" reference 4)
    ref99=$(agg "$rate" reference 5)
    for w in $WORKERS; do
        k50=$(agg "$rate" "khost-w$w" 4)
        k99=$(agg "$rate" "khost-w$w" 5)
        awk -v rate="$rate" -v w="$w" -v a="${k50%% *}" -v b="${ref50%% *}" \
            -v c="${k99%% *}" -v d="${ref99%% *}" 'BEGIN {
            if (a == "-" || b == "-" || c == "-" || d == "-") {
                printf "  %s msg/s, %s worker(s): no samples\n", rate, w; exit }
            d50 = a - b; d99 = c - d
            printf "  %s msg/s, %s worker(s): p50 %+.2f ms, p99 %+.2f ms: %s\n", rate, w,
                   d50, d99, (d50 <= 1 && d99 <= 5 ? "MET" : "NOT MET") }'
    done
done
say "done in $((SECONDS - t_start)) s"
