#!/usr/bin/env bash
# Transport ceiling (issue 14): builds bench_transport and the noop plugin,
# runs bench_transport (host -> ONE real worker -> results, no Kafka) and
# prints its table, with the machine's load before and after. Method and
# figures: tests/bench/README.md, "Transport ceiling and latency".
#
#   bash tests/bench/transport.sh    # about 60 s with the defaults
#
# Environment (all optional):
#   BENCH_MESSAGES   messages per run (default 5000000)
#   BENCH_BATCHES    messages per MESSAGES frame, comma-separated
#                    (default 64,256,1024)
#   BENCH_WINDOW     messages in flight at most (default 4096, the host's
#                    KH_MAX_INFLIGHT)
#   BENCH_VALUE_BYTES  value size (default 100)
#   BENCH_REPS       rounds; the table shows medians (default 5)
#   BENCH_MODES      "socket", "ring" or both (default "socket ring"): MESSAGES
#                    frames on the socket, or in the message ring with RING
#                    frames on the socket as dispatch.c sends them
#   BENCH_BUILD_DIR  build directory (default <repo>/build)
#   BENCH_NO_BUILD=1 do not build, use the binaries as they are
#
# Exit status: 0 when the benchmark ran (whatever the numbers), 1 when it
# could not run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BENCH_BUILD_DIR:-$ROOT/build}

BENCH_TAG=transport
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$ROOT/tests/bench/lib.sh"

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
        say "configuring $BUILD"
        cmake -S "$ROOT" -B "$BUILD" -DKHOST_WERROR=ON >/dev/null ||
            die "cmake configure failed"
    fi
    say "building bench_transport and noop in $BUILD"
    cmake --build "$BUILD" -j2 --target bench_transport noop \
        >"$BUILD/transport-build.log" 2>&1 || {
        tail -20 "$BUILD/transport-build.log" >&2
        die "build failed (log: $BUILD/transport-build.log)"
    }
fi
BIN=$BUILD/bench/bench_transport
NOOP=$BUILD/plugins/noop.so
[[ -x $BIN ]] || die "missing $BIN (the bench targets need the test tree configured)"
[[ -f $NOOP ]] || die "missing $NOOP"

LOG=$(mktemp /tmp/khost-transport.XXXXXX)
OUT=$(mktemp /tmp/khost-transport-out.XXXXXX)
PID=""
cleanup() {
    local st=$?
    set +e
    if [[ -n $PID ]]; then
        # bench_transport's worker dies with it (PR_SET_PDEATHSIG).
        kill -TERM "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    rm -f "$OUT"
    if [[ $st != 0 ]]; then
        say "worker log kept in $LOG"
    else
        rm -f "$LOG"
    fi
    exit "$st"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

BUSY_BEFORE=$(cpu_busy)
[[ $BUSY_BEFORE -lt 15 ]] ||
    say "warning: the machine is already ${BUSY_BEFORE}% busy; results will be noisy"
for mode in ${BENCH_MODES:-socket ring}; do
    case $mode in
    socket) flag=() ;;
    ring) flag=(-R) ;;
    *) die "BENCH_MODES: unknown mode '$mode' (socket or ring)" ;;
    esac
    "$BIN" -p "$NOOP" -n "${BENCH_MESSAGES:-5000000}" -b "${BENCH_BATCHES:-64,256,1024}" \
        -w "${BENCH_WINDOW:-4096}" -s "${BENCH_VALUE_BYTES:-100}" -r "${BENCH_REPS:-5}" \
        "${flag[@]}" >"$OUT" 2>"$LOG" &
    PID=$!
    rc=0
    wait "$PID" || rc=$?
    PID=""
    grep '^BENCH_TRANSPORT' "$OUT" >&2 || true
    grep -v '^BENCH_TRANSPORT' "$OUT"
    [[ $rc == 0 ]] || die "bench_transport exited $rc: $(tail -3 "$LOG")"
    echo
done
BUSY_AFTER=$(cpu_busy)
echo "$(nproc) CPU(s); other load: ${BUSY_BEFORE}% CPU busy before, ${BUSY_AFTER}% after the run"
