#!/usr/bin/env bash
# The chaos run: builds khost, the fault plugin and the chaos driver if
# needed, then runs the driver and tees its output. See README.md.
#
#   bash tests/chaos/run.sh             # full: 500,000 messages, 16 partitions
#   bash tests/chaos/run.sh --short     # what CI runs (ctest -R chaos_short)
#   bash tests/chaos/run.sh --seed 42 --keep
#
# Environment (all optional):
#   CHAOS_BUILD_DIR  build directory (default <repo>/build)
#   CHAOS_NO_BUILD=1 do not build, use the binaries as they are
#   CHAOS_OUT        file the output is teed to
#                    (default <build>/chaos/chaos-<time>.log)
#
# Exit status: the driver's (0 pass, 1 a check failed, 2 setup failed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${CHAOS_BUILD_DIR:-$ROOT/build}

if [[ ${CHAOS_NO_BUILD:-0} != 1 ]]; then
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
        echo "[chaos] configuring $BUILD" >&2
        cmake -S "$ROOT" -B "$BUILD" -DKHOST_WERROR=ON >/dev/null
    fi
    echo "[chaos] building khost, fault.so and the chaos driver in $BUILD" >&2
    # The chaos target exists only when the test tree is configured
    # (it needs Criterion, like every test).
    if ! cmake --build "$BUILD" -j2 --target chaos >"$BUILD/chaos-build.log" 2>&1; then
        tail -20 "$BUILD/chaos-build.log" >&2
        echo "[chaos] build failed (log: $BUILD/chaos-build.log)" >&2
        exit 2
    fi
fi

OUT=${CHAOS_OUT:-$BUILD/chaos/chaos-$(date +%Y%m%d-%H%M%S).log}
mkdir -p "$(dirname "$OUT")"
echo "[chaos] output also goes to $OUT" >&2
set +e
"$BUILD/chaos/chaos" "$@" 2>&1 | tee "$OUT"
status=${PIPESTATUS[0]}
exit "$status"
