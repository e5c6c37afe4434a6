#!/usr/bin/env bash
# Throughput benchmark suite: khost with the noop plugin vs a plain
# librdkafka group consumer (the reference) vs kcat, at several shapes
# (partitions x value size), each against a standalone mock cluster of its
# own. One table per shape: msg/s, steady msg/s, CPU-seconds per million
# messages, host and worker RSS, ratios to the reference. Method and
# caveats: tests/bench/README.md. Crash-to-resume is tests/bench/crash.sh.
#
#   bash tests/bench/run.sh
#
# Environment (all optional):
#   BENCH_SHAPES     shapes, each PARTITIONS:VALUE_BYTES[:WORKERS,...]
#                    (default "8:100 64:100 1000:100 8:4096 64:4096"); workers per
#                    shape default to BENCH_WORKERS, or 16 at >= 1000
#                    partitions
#   BENCH_MESSAGES   messages per topic (default per shape: 320000, or
#                    fewer so that a partition holds <= 40000 messages and
#                    <= 4.5 MB of values: the mock keeps only ~5 MB per
#                    partition; 8:4096 gets 8784)
#   BENCH_REPS       rounds per shape; the table shows medians (default 5,
#                    3 at >= 64 partitions)
#   BENCH_COMMIT_MS  auto.commit.interval.ms for the timed group consumers
#                    (default 10; it bounds the timing error, see README)
#   BENCH_COMMITTED_START=1  commit offset 0 of every partition for each
#                    contender's group before it starts (bench_commit_start),
#                    as for a consumer that restarts; default 0: fresh
#                    groups, whose start librdkafka resolves partition by
#                    partition (auto.offset.reset)
#   BENCH_WORKERS    khost worker counts below 1000 partitions (default "1 2 4")
#   BENCH_HTTP_WORKERS  worker count of the row with the HTTP server on
#                    and /metrics scraped every second, run in the FIRST
#                    shape only (default 2, else the first worker count;
#                    "none" leaves it out)
#   BENCH_KHOST_KAFKA  extra lines for khost's [kafka] section, to try a
#                    setting, e.g. BENCH_KHOST_KAFKA='fetch.wait.max.ms = 10'
#   BENCH_KHOST_HOST extra lines for khost's [host] section, e.g.
#                    BENCH_KHOST_HOST='prefetch_budget_mb = 16'
#   BENCH_KAFKA      extra "key = value" lines for both khost's [kafka] and
#                    the reference (bench_reference reads them from
#                    BENCH_REFERENCE_KAFKA), to compare both with a setting
#   BENCH_BUILD_DIR  build directory (default <repo>/build)
#   BENCH_NO_BUILD=1 do not build, use the binaries as they are
#   BENCH_PLUGIN     the khost rows' plugin (default <build>/plugins/noop.so,
#                    which sets KHOST_PLUGIN_NO_HEADERS); rows still say noop
#   BENCH_KEEP=1     keep the work directory with every log
#
# Exit status: 0 when the benchmark ran (whatever the numbers), 1 when it
# could not run (build failure, a contender failed or timed out).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$ROOT/build}
SHAPES=${BENCH_SHAPES:-8:100 64:100 1000:100 8:4096 64:4096}
COMMIT_MS=${BENCH_COMMIT_MS:-10}
COMMITTED_START=${BENCH_COMMITTED_START:-0}
DEFAULT_WORKERS=${BENCH_WORKERS:-1 2 4}
TIMEOUT_S=90 # per contender run

BENCH_TAG=bench
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/tests/bench/lib.sh"

# ---- build ----
TOOLS="bench_produce bench_reference bench_wait_committed bench_commit_start"
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
        say "configuring $BUILD"
        cmake -S "$ROOT" -B "$BUILD" -DKHOST_WERROR=ON >/dev/null ||
            die "cmake configure failed"
    fi
    say "building khost, noop and the bench tools in $BUILD"
    # Only what the benchmark needs; bench targets exist only when the test
    # tree is configured (it needs Criterion), else they are compiled below.
    targets="khost noop"
    # The small worker executable, where the tree has one (khost falls back
    # to "khost worker" without it).
    if cmake --build "$BUILD" --target help 2>/dev/null | grep -q ' khost-worker$'; then
        targets="$targets khost-worker"
    fi
    if cmake --build "$BUILD" --target help 2>/dev/null | grep -q bench_produce; then
        targets="$targets $TOOLS"
    fi
    # shellcheck disable=SC2086
    cmake --build "$BUILD" -j2 --target $targets >"$BUILD/bench-build.log" 2>&1 ||
        {
            tail -20 "$BUILD/bench-build.log" >&2
            die "build failed (log: $BUILD/bench-build.log); BENCH_NO_BUILD=1 uses the binaries as they are"
        }
fi
KHOST=$BUILD/khost
NOOP=${BENCH_PLUGIN:-$BUILD/plugins/noop.so}
BIN=$BUILD/bench
for t in $TOOLS; do
    if [[ ! -x $BIN/$t ]]; then
        say "compiling $t directly (test tree not configured)"
        mkdir -p "$BIN"
        # shellcheck disable=SC2046
        gcc -O2 -std=gnu11 -Wall -Wextra -o "$BIN/$t" "$ROOT/tests/bench/$t.c" \
            $(pkg-config --cflags --libs rdkafka) || die "cannot compile $t"
    fi
done
[[ -x $KHOST && -f $NOOP ]] || die "missing $KHOST or $NOOP"
command -v kcat >/dev/null || die "kcat not found (apt-get install kcat)"

# ---- processes: every one we start is tracked by pid and ended on exit ----
bench_track_processes bench

# ---- one mock cluster per shape: one topic per round ----
# start_mock: a standalone mock with topics ${TPFX}1..${TPFX}$REPS of
# $PARTS partitions; sets MOCK and BOOT.
start_mock() {
    local topic_args=() r attempt
    rm -f "$WORK/bootstrap"
    for r in $(seq "$REPS"); do topic_args+=(--topic "${TPFX}$r:$PARTS"); done
    # Rarely the mock hangs while creating its topics; then start it again.
    for attempt in 1 2 3; do
        "$KHOST" mock-cluster --brokers 1 "${topic_args[@]}" \
            --bootstrap-file "$WORK/bootstrap" >"$WORK/mock-$TPFX.out" 2>"$WORK/mock-$TPFX.err" &
        MOCK=$!
        PIDS+=("$MOCK")
        for _ in $(seq 300); do
            [[ -s $WORK/bootstrap ]] && break
            kill -0 "$MOCK" 2>/dev/null || die "mock cluster exited: $(cat "$WORK/mock-$TPFX.err")"
            sleep 0.05
        done
        [[ -s $WORK/bootstrap ]] && break
        say "mock cluster not up after 15 s (attempt $attempt), restarting it"
        kill -KILL "$MOCK" 2>/dev/null || true
        wait "$MOCK" 2>/dev/null || true
        forget "$MOCK"
    done
    [[ -s $WORK/bootstrap ]] || die "mock cluster did not start"
    BOOT=$(cat "$WORK/bootstrap")
}

stop_mock() {
    kill -TERM "$MOCK" 2>/dev/null || true
    wait "$MOCK" 2>/dev/null || true
    forget "$MOCK"
}

# kv KEY LINE: the value of KEY=VALUE in LINE
kv() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" <<<" $2"; }

# Results: one line per run in $RESULTS (one file per shape):
#   NAME SECONDS RATE STEADY ROUND CPU_S_PER_M HOST_HWM_KB WORKER_HWM_KB WORKER_ANON_KB
# ("-" where a column does not apply).
ROUND=0
record() { echo "$1 $2 $3 $4 $ROUND ${5:--} ${6:--} ${7:--} ${8:--}" >>"$RESULTS"; }

# commit_rates FILE: from bench_wait_committed's line, print
# "SECONDS RATE STEADY CPU_S_PER_M HOST_HWM_KB WORKER_HWM_KB WORKER_ANON_KB":
# first commit seen -> all committed, 10%->90%, the process tree's CPU
# seconds over the same window per million messages of that window, and
# the peak RSS of the process and its largest child at the end.
commit_rates() {
    local line
    line=$(grep '^COMMITTED' "$1") || return 1
    awk -v f="$(kv first_wall "$line")" -v c="$(kv first_total "$line")" \
        -v d="$(kv done_wall "$line")" -v n="$(kv end_total "$line")" \
        -v a="$(kv t10 "$line")" -v b="$(kv t90 "$line")" \
        -v c0="$(kv cpu_first "$line")" -v c1="$(kv cpu_done "$line")" \
        -v hh="$(kv hwm_kb "$line")" -v wh="$(kv child_hwm_max_kb "$line")" \
        -v wa="$(kv child_anon_max_kb "$line")" 'BEGIN {
            s = d - f; st = b - a
            printf "%.4f %.0f %.0f ", s, (s > 0 ? (n - c) / s : 0),
                   (st > 0 ? 0.8 * n / st : 0)
            if (c0 != "" && c0 >= 0 && c1 >= 0 && n > c) printf "%.3f ", (c1 - c0) / (n - c) * 1e6
            else printf "- "
            printf "%s %s %s\n", (hh > 0 ? hh : "-"), (wh > 0 ? wh : "-"), (wa > 0 ? wa : "-") }'
}

# check_tasks FILE WHO: the CPU of the window sums live threads; warn when
# the thread count changed in it (a thread that exited took its CPU along).
check_tasks() {
    local line a b
    line=$(grep '^COMMITTED' "$1") || return 0
    a=$(kv tasks_first "$line")
    b=$(kv tasks_done "$line")
    [[ -z $a || $a == "$b" ]] ||
        say "  warning: $2 had $a thread(s) at the first commit and $b at the end; its CPU-s/M may be off"
}

start_watcher() { # GROUP TOPIC OUTFILE [PID]
    "$BIN/bench_wait_committed" "$BOOT" "$2" "$PARTS" "$1" "$TIMEOUT_S" ${4:+"$4"} \
        >"$3" 2>"$3.err" &
    WATCHER=$!
    PIDS+=("$WATCHER")
}

finish_watcher() { # OUTFILE
    local rc=0
    wait "$WATCHER" || rc=$?
    forget "$WATCHER"
    [[ $rc == 0 ]] || die "bench_wait_committed failed ($rc): $(cat "$1.err")"
}

# commit_start GROUP TOPIC: with BENCH_COMMITTED_START=1, the group's
# offsets start committed at 0 (bench_commit_start), as for a consumer
# that restarts; otherwise the group is fresh and librdkafka resolves
# auto.offset.reset partition by partition.
commit_start() {
    [[ $COMMITTED_START == 1 ]] || return 0
    "$BIN/bench_commit_start" "$BOOT" "$2" "$1" "$PARTS" ||
        die "bench_commit_start failed for group $1"
}

run_reference() { # ROUND
    local tag=ref-$TPFX-r$1 line rates rpid rc=0
    commit_start "bench-$tag-$$" "${TPFX}$1"
    BENCH_REFERENCE_KAFKA=${BENCH_KAFKA:-} timeout "$TIMEOUT_S" "$BIN/bench_reference" "$BOOT" "${TPFX}$1" \
        "bench-$tag-$$" "$N" "$COMMIT_MS" >"$WORK/$tag.out" 2>"$WORK/$tag.err" &
    rpid=$!
    PIDS+=("$rpid")
    # timeout(1) runs the reference as its child: the watcher samples
    # that child (timeout's own CPU is not counted: it only waits).
    start_watcher "bench-$tag-$$" "${TPFX}$1" "$WORK/$tag.commits" "$(ref_pid "$rpid")"
    wait "$rpid" || rc=$?
    forget "$rpid"
    [[ $rc == 0 ]] || die "bench_reference failed ($rc): $(tail -3 "$WORK/$tag.err")"
    finish_watcher "$WORK/$tag.commits"
    check_tasks "$WORK/$tag.commits" reference
    line=$(grep '^REFERENCE' "$WORK/$tag.out")
    [[ $(kv messages "$line") == "$N" ]] || die "reference got $(kv messages "$line") messages"
    record reference-self "$(kv seconds "$line")" "$(kv msgs_per_s "$line")" -
    rates=$(commit_rates "$WORK/$tag.commits") || die "no commit timing in $WORK/$tag.commits"
    # The reference has no children: its own peak RSS goes in the host column.
    # shellcheck disable=SC2086
    set -- $rates
    record reference "$1" "$2" "$3" "$4" "$5" - -
    say "  reference: $(kv msgs_per_s "$line") msg/s first->last message;" \
        "$2 msg/s by commits, $3 steady, $4 CPU-s/M msg, VmHWM $5 kB"
}

# ref_pid TIMEOUT_PID: the pid of the child timeout(1) started (waits
# up to 2 s for it to appear).
ref_pid() {
    local kid
    for _ in $(seq 200); do
        kid=$(cat /proc/"$1"/task/*/children 2>/dev/null | awk '{ print $1; exit }')
        [[ -n $kid ]] && {
            echo "$kid"
            return
        }
        sleep 0.01
    done
    die "the reference (under timeout, pid $1) did not start"
}

run_kcat() { # ROUND
    local tag=kcat-$TPFX-r$1 t0 t1 secs
    t0=$EPOCHREALTIME
    # fetch.wait.max.ms=10: see README.md (otherwise ~1 s of the wall time
    # is two 500 ms long-poll fetches: the EOF check and the shutdown).
    timeout "$TIMEOUT_S" kcat -C -b "$BOOT" -t "${TPFX}$1" -o beginning -e -q \
        -X fetch.wait.max.ms=10 >/dev/null 2>"$WORK/$tag.err" || die "kcat failed: $(tail -3 "$WORK/$tag.err")"
    t1=$EPOCHREALTIME
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    record kcat "$secs" "$(awk -v s="$secs" -v n="$N" 'BEGIN { printf "%.0f", n / s }')" -
    say "  kcat: $secs s wall"
}

# start_scraper PORT OUTFILE: GET /metrics every second until SIGTERM,
# then write "SCRAPES ok=N failed=M bytes=B" (failed: refused before the
# server is up, or an error status; bytes: the last body's size).
start_scraper() {
    python3 - "$1" "$2" <<'PY' &
import signal, sys, time, urllib.request
port, out = sys.argv[1], sys.argv[2]
ok = failed = size = 0
def done(*_):
    with open(out, "w") as f:
        f.write("SCRAPES ok=%d failed=%d bytes=%d\n" % (ok, failed, size))
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
url = "http://127.0.0.1:%s/metrics" % port
nxt = time.monotonic()
while True:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            body = r.read()
        ok, size = ok + 1, len(body)
    except Exception:
        failed += 1
    nxt += 1.0
    time.sleep(max(0.0, nxt - time.monotonic()))
PY
    SCRAPER=$!
    PIDS+=("$SCRAPER")
}

finish_scraper() { # OUTFILE
    kill -TERM "$SCRAPER" 2>/dev/null || true
    wait "$SCRAPER" 2>/dev/null || true
    forget "$SCRAPER"
    grep -q '^SCRAPES ok=[1-9]' "$1" ||
        die "the /metrics scraper got no answer: $(cat "$1" 2>/dev/null)"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

run_khost() { # ROUND WORKERS [http]
    local tag=khost-$TPFX-w$2-r$1 ini kpid rc=0 stopped rates http="" port="" name
    name=khost-w$2
    if [[ ${3:-} == http ]]; then
        tag=khost-http-$TPFX-w$2-r$1
        name=khost-http-w$2
        port=$(free_port)
        http=$'[http]\nlisten = 127.0.0.1:'"$port"
    fi
    ini=$WORK/$tag.ini
    cat >"$ini" <<EOF
[host]
brokers = $BOOT
${BENCH_KHOST_HOST:-}
[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500
; the benchmark times khost through its commits: commit often
auto.commit.interval.ms = $COMMIT_MS
${BENCH_KAFKA:-}
${BENCH_KHOST_KAFKA:-}
[pipeline.bench]
topics = ${TPFX}$1
group = bench-$tag-$$
plugin = $NOOP
workers = $2
handler_timeout_ms = 0
$http
EOF
    commit_start "bench-$tag-$$" "${TPFX}$1"
    "$KHOST" run -c "$ini" 2>"$WORK/$tag.log" &
    kpid=$!
    PIDS+=("$kpid")
    # The watcher samples the host and its workers (children of $kpid).
    start_watcher "bench-$tag-$$" "${TPFX}$1" "$WORK/$tag.commits" "$kpid"
    [[ -z $port ]] || start_scraper "$port" "$WORK/$tag.scrapes"
    finish_watcher "$WORK/$tag.commits"
    [[ -z $port ]] || finish_scraper "$WORK/$tag.scrapes"
    kill -TERM "$kpid"
    wait "$kpid" || rc=$?
    forget "$kpid"
    [[ $rc == 0 ]] || die "khost exited $rc: $(tail -5 "$WORK/$tag.log")"
    stopped=$(grep -o 'stopped: handled=[0-9]*' "$WORK/$tag.log" | grep -o '[0-9]*$' || true)
    [[ -n $stopped && $stopped -ge $N ]] || die "khost handled ${stopped:-?} of $N"
    rates=$(commit_rates "$WORK/$tag.commits") || die "no commit timing in $WORK/$tag.commits"
    check_tasks "$WORK/$tag.commits" "$name"
    # The host, its workers and the default spare (spare_workers = 1).
    grep -q "procs=$(($2 + 2)) " "$WORK/$tag.commits" ||
        say "  warning: the watcher did not see $2 worker(s) and a spare of khost at the end: $(cat "$WORK/$tag.commits")"
    # shellcheck disable=SC2086
    record "$name" $rates
    # shellcheck disable=SC2086
    set -- $rates
    say "  $name${port:+ (HTTP on, /metrics every 1 s)}: $2 msg/s by commits, $3 steady," \
        "$4 CPU-s/M msg, host VmHWM $5 kB, worker VmHWM $6 kB (handled=$stopped${port:+; $(cat "$WORK/$tag.scrapes")})"
}

# scrape_cost WORKERS: the host CPU one /metrics scrape costs, measured
# directly (the throughput rows are too noisy to see it): a khost with
# [http] reads bench1 in a group of its own to the end, then its process
# CPU (utime + stime, librdkafka's threads included) is read over 5 s
# idle and over 1000 back-to-back scrapes; the idle rate is subtracted.
# Prints "MS_PER_SCRAPE BYTES IDLE_CORE_FRACTION".
scrape_cost() {
    local tag=khost-cost port ini kpid c0 c1 c2 hz py
    port=$(free_port)
    ini=$WORK/$tag.ini
    cat >"$ini" <<EOF
[host]
brokers = $BOOT
[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500
[http]
listen = 127.0.0.1:$port
[pipeline.bench]
topics = ${TPFX}1
group = bench-$tag-$$
plugin = $NOOP
workers = $1
EOF
    "$KHOST" run -c "$ini" 2>"$WORK/$tag.log" &
    kpid=$!
    PIDS+=("$kpid")
    start_watcher "bench-$tag-$$" "${TPFX}1" "$WORK/$tag.commits" "$kpid"
    finish_watcher "$WORK/$tag.commits"
    sleep 1
    hz=$(getconf CLK_TCK)
    c0=$(awk '{ print $14 + $15 }' "/proc/$kpid/stat")
    sleep 5
    c1=$(awk '{ print $14 + $15 }' "/proc/$kpid/stat")
    py=$(python3 - "$port" <<'PY'
import sys, time, urllib.request
url = "http://127.0.0.1:%s/metrics" % sys.argv[1]
n, size = 1000, 0
t0 = time.monotonic()
for _ in range(n):
    with urllib.request.urlopen(url, timeout=5) as r:
        size = len(r.read())
print(n, "%.4f" % (time.monotonic() - t0), size)
PY
    ) || die "scraping $port failed"
    c2=$(awk '{ print $14 + $15 }' "/proc/$kpid/stat")
    kill -TERM "$kpid"
    wait "$kpid" || die "khost exited $?: $(tail -5 "$WORK/$tag.log")"
    forget "$kpid"
    awk -v a="$c0" -v b="$c1" -v c="$c2" -v hz="$hz" -v py="$py" 'BEGIN {
        split(py, f, " "); idle = (b - a) / hz / 5
        busy = (c - b) / hz - idle * f[2]
        printf "%.3f %d %.4f\n", 1000 * busy / f[1], f[3], idle }'
}

# ---- the table of one shape: medians over its rounds ----
med() { # NAME COLUMN: median of that column over NAME's runs
    awk -v n="$1" -v c="$2" '$1 == n && $c != "-" { print $c }' "$RESULTS" |
        sort -g | awk '{ v[NR] = $1 } END {
            if (!NR) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m }'
}
spread() { # NAME COLUMN: "min-max" of that column over NAME's runs
    awk -v n="$1" -v c="$2" '$1 == n && $c != "-" { print $c }' "$RESULTS" |
        sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END {
            if (!NR) print "-"; else printf "%.0f-%.0fk\n", lo / 1000, hi / 1000 }'
}

row() { # NAME LABEL METHOD BASE
    awk -v l="$2" -v m="$3" -v r="$(med "$1" 3)" -v sp="$(spread "$1" 3)" \
        -v st="$(med "$1" 4)" -v b="$4" -v bs="$REF_STEADY" \
        -v cpu="$(med "$1" 6)" -v bc="$REF_CPU" -v hh="$(med "$1" 7)" \
        -v wh="$(med "$1" 8)" -v wa="$(med "$1" 9)" 'BEGIN {
        printf "| %-22s | %-17s | %8.0f | %-11s | %5.2fx | ", l, m, r, sp, r / b
        if (st == "-") printf "%8s | %6s | ", "-", "-"
        else printf "%8.0f | %5.2fx | ", st, st / bs
        if (cpu == "-") printf "%6s | %6s | ", "-", "-"
        else printf "%6.3f | %5.2fx | ", cpu, (bc > 0 ? cpu / bc : 0)
        printf "%7s | %7s | %7s |\n", (hh == "-" ? "-" : sprintf("%.1f", hh / 1024)),
            (wh == "-" ? "-" : sprintf("%.1f", wh / 1024)),
            (wa == "-" ? "-" : sprintf("%.2f", wa / 1024)) }'
}

# target LABEL OK: one line of the targets list
target() { printf '  %-62s %s\n' "$1" "$([[ $2 == 1 ]] && echo MET || echo 'NOT MET')"; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "-" && b != "-" && a + 0 >= b + 0) }'; }

shape_table() {
    REF_RATE=$(med reference 3)
    REF_STEADY=$(med reference 4)
    REF_SELF=$(med reference-self 3)
    REF_CPU=$(med reference 6)
    echo
    echo "### shape $PARTS partitions x $VALUE B: $N messages, median of $REPS round(s)"
    echo
    echo "other load: ${BUSY_BEFORE}% CPU busy before, ${BUSY_AFTER}% after this shape; $((SECONDS - t_shape)) s"
    echo
    echo "| contender              | timed by          |    msg/s | range       |  x ref | steady/s |  x ref | CPU-s/M |  x ref | host MB | wrk MB | wrk anon |"
    echo "|------------------------|-------------------|---------:|-------------|-------:|---------:|-------:|-------:|-------:|--------:|-------:|---------:|"
    row reference-self "reference (librdkafka)" "itself, 1st->last" "$REF_SELF"
    row reference "reference (librdkafka)" "commits, 1st->all" "$REF_RATE"
    row kcat "kcat -> /dev/null" "wall, start->exit" "$REF_SELF"
    for w in $SHAPE_WORKERS; do
        row "khost-w$w" "khost noop, $w worker$([[ $w == 1 ]] || echo s)" "commits, 1st->all" "$REF_RATE"
    done
    [[ -z $HTTP_W ]] ||
        row "khost-http-w$HTTP_W" "  + HTTP, scrape 1/s" "commits, 1st->all" "$REF_RATE"
    echo
    # Targets (issue 14): throughput against the commit-timed reference;
    # CPU per message of host + workers against the reference's.
    local tput=1.0 w r c ok
    [[ $PARTS -gt 8 ]] || tput=0.95
    echo "targets ($PARTS x $VALUE B):"
    for w in $SHAPE_WORKERS; do
        r=$(awk -v a="$(med "khost-w$w" 3)" -v b="$REF_RATE" 'BEGIN { printf "%.2f", a / b }')
        ok=0
        ge "$r" "$tput" && ok=1
        target "throughput, $w worker(s): ${r}x the reference (>= ${tput}x)" "$ok"
        c=$(awk -v a="$(med "khost-w$w" 6)" -v b="$REF_CPU" 'BEGIN { if (a == "-" || b <= 0) print "-"; else printf "%.2f", a / b }')
        ok=0
        ge 1.1 "$c" && ok=1
        target "CPU per message (host + workers), $w worker(s): ${c}x (<= 1.1x)" "$ok"
    done
    if [[ $PARTS -ge 1000 ]]; then
        for w in $SHAPE_WORKERS; do
            c=$(med "khost-w$w" 7)
            ok=0
            ge 30720 "$c" && ok=1
            target "host RSS peak, $w worker(s): $(awk -v k="$c" 'BEGIN { printf "%.1f", k / 1024 }') MB (<= 30 MB)" "$ok"
        done
    fi
    for w in $SHAPE_WORKERS; do
        c=$(med "khost-w$w" 8)
        ok=0
        ge 4096 "$c" && ok=1
        target "worker RSS peak (noop), $w worker(s): $(awk -v k="$c" 'BEGIN { printf "%.2f", k / 1024 }') MB (<= 4 MB)" "$ok"
        c=$(med "khost-w$w" 9)
        ok=0
        ge 4096 "$c" && ok=1
        target "  its anonymous part (RssAnon), $w worker(s): $(awk -v k="$c" 'BEGIN { printf "%.2f", k / 1024 }') MB (<= 4 MB)" "$ok"
    done
    if [[ -n $HTTP_W ]]; then
        # The HTTP row against the row with the same worker count without it:
        # the ratio of the two medians, and the median of the per-round ratios
        # (both run back to back in each round, so they share its load).
        paired=$(awk -v a="khost-http-w$HTTP_W" -v b="khost-w$HTTP_W" '
            $1 == a { x[$5] = $3 } $1 == b { y[$5] = $3 }
            END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' \
            "$RESULTS" | sort -g | awk '{ v[NR] = $1 } END {
                if (!NR) { print "-"; exit }
                print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
        awk -v w="$HTTP_W" -v rate="$(med "khost-http-w$HTTP_W" 3)" \
            -v base="$(med "khost-w$HTTP_W" 3)" -v st="$(med "khost-http-w$HTTP_W" 4)" \
            -v bst="$(med "khost-w$HTTP_W" 4)" -v p="$paired" 'BEGIN {
            if (base == "-" || base == 0 || p == "-") {
                printf "http: no row without HTTP at %s worker(s) to compare with\n", w
                exit }
            r = rate / base; s = (bst > 0 ? st / bst : 0)
            printf "http: %s worker(s), [http] on and /metrics scraped every 1 s, against the same row without HTTP:\n", w
            printf "  %.3fx (medians), %.3fx (median of per-round ratios), steady %.3fx; target >= 0.98x: %s\n",
                   r, p, s, (p >= 0.98 ? "MET" : "NOT MET") }'
        # shellcheck disable=SC2086
        set -- $COST
        awk -v ms="$1" -v bytes="$2" -v idle="$3" -v parts="$PARTS" 'BEGIN {
            printf "  one scrape (%d B, %d partitions) costs the host %.3f ms of CPU: %.3f%% of a core at 1/s (idle host: %.2f%%)\n",
                   bytes, parts, ms, ms / 10, 100 * idle }'
    fi
}

# ---- the shapes ----
# per_shape_n PARTS VALUE: messages per topic (see the header)
per_shape_n() {
    awk -v p="$1" -v v="$2" 'BEGIN {
        per = int(4.5e6 / v); if (per > 40000) per = 40000
        n = per * p; if (n > 320000) n = 320000
        print n }'
}

echo "khost throughput suite: $(nproc) CPU(s), 1 mock broker per shape, auto.commit.interval.ms=$COMMIT_MS," \
    "librdkafka $(pkg-config --modversion rdkafka 2>/dev/null || echo '?'), khost $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)"
[[ -z ${BENCH_KAFKA:-} ]] || echo "[kafka] extra for khost and the reference: ${BENCH_KAFKA//$'\n'/; }"
[[ -z ${BENCH_KHOST_KAFKA:-} ]] || echo "khost [kafka] extra: ${BENCH_KHOST_KAFKA//$'\n'/; }"
t_start=$SECONDS
first_shape=1
for shape in $SHAPES; do
    IFS=: read -r PARTS VALUE SW <<<"$shape"
    [[ $PARTS =~ ^[0-9]+$ && $VALUE =~ ^[0-9]+$ && $PARTS -ge 1 && $PARTS -le 1024 ]] ||
        die "bad shape '$shape' (PARTITIONS:VALUE_BYTES[:WORKERS,...], partitions 1..1024)"
    if [[ -n $SW ]]; then
        SHAPE_WORKERS=${SW//,/ }
    elif [[ $PARTS -ge 1000 ]]; then
        SHAPE_WORKERS=16
    else
        SHAPE_WORKERS=$DEFAULT_WORKERS
    fi
    N=${BENCH_MESSAGES:-$(per_shape_n "$PARTS" "$VALUE")}
    if [[ -n ${BENCH_REPS:-} ]]; then
        REPS=$BENCH_REPS
    elif [[ $PARTS -ge 64 ]]; then
        REPS=3
    else
        REPS=5
    fi
    TPFX=s${PARTS}x${VALUE}r
    RESULTS=$WORK/results-$TPFX
    : >"$RESULTS"
    HTTP_W=""
    if [[ $first_shape == 1 ]]; then
        HTTP_W=${BENCH_HTTP_WORKERS:-}
        if [[ -z $HTTP_W ]]; then
            HTTP_W=2
            [[ " $SHAPE_WORKERS " == *" 2 "* ]] || HTTP_W=${SHAPE_WORKERS%% *}
        fi
        [[ $HTTP_W != none ]] || HTTP_W=""
    fi
    first_shape=0
    contenders=(reference kcat)
    for w in $SHAPE_WORKERS; do contenders+=("khost:$w"); done
    [[ -z $HTTP_W ]] || contenders+=("khosthttp:$HTTP_W")

    t_shape=$SECONDS
    start_mock
    say "shape $PARTS x $VALUE B: mock at $BOOT (pid $MOCK); $REPS round(s) of $N messages; workers: $SHAPE_WORKERS"
    BUSY_BEFORE=$(cpu_busy)
    [[ $BUSY_BEFORE -lt 15 ]] ||
        say "warning: the machine is already ${BUSY_BEFORE}% busy; results will be noisy"
    for r in $(seq "$REPS"); do
        ROUND=$r
        out=$("$BIN/bench_produce" "$BOOT" "${TPFX}$r" "$PARTS" "$N" "$VALUE") ||
            die "produce failed: $out"
        say "round $r: $out"
        # Rotate the order each round so that drift does not favour anyone.
        k=${#contenders[@]}
        for i in $(seq 0 $((k - 1))); do
            c=${contenders[$(((i + r - 1) % k))]}
            case $c in
            reference) run_reference "$r" ;;
            kcat) run_kcat "$r" ;;
            khost:*) run_khost "$r" "${c#khost:}" ;;
            khosthttp:*) run_khost "$r" "${c#khosthttp:}" http ;;
            esac
        done
    done
    BUSY_AFTER=$(cpu_busy)
    if [[ -n $HTTP_W ]]; then
        say "measuring the cost of one /metrics scrape ($HTTP_W worker(s))"
        COST=$(scrape_cost "$HTTP_W")
    fi
    stop_mock
    shape_table
done
echo
echo "x ref: ratio to the reference timed the same way (commit-timed rows and"
echo "steady/s to the commit-timed reference; kcat to the self-timed reference)."
echo "range: lowest-highest msg/s over the rounds. steady/s: 80% of the messages /"
echo "time from 10% to 90% committed. CPU-s/M: on-CPU seconds (all threads; for"
echo "khost the host and its workers) from the first commit seen to the last, per"
echo "million messages committed in that window. host MB: VmHWM of the host (of"
echo "the reference process on its rows); wrk MB / wrk anon: the largest worker's"
echo "VmHWM / RssAnon, read just before khost is stopped."
say "done in $((SECONDS - t_start)) s"
