#!/usr/bin/env bash
# Builds the libFuzzer targets (if needed) and fuzzes each for SECONDS.
#
# usage: tests/fuzz/run.sh [SECONDS] [TARGET...]
#   SECONDS   per target, default 60
#   TARGET    fuzz_config fuzz_worker_frames fuzz_messages fuzz_jsonl
#             (default: all)
# environment:
#   KHOST_FUZZ_BUILD  build folder (default build-fuzz), configured with
#                     CC=clang (or $CC) on first use
#   KHOST_FUZZ_JOBS   targets fuzzed at the same time (default: nproc)
#   KHOST_FUZZ_KEEP   1: keep the work folder (grown corpora, logs) even
#                     when nothing crashed
#   KHOST_FUZZ_ARGS   extra libFuzzer flags, e.g. "-max_len=65536"
#
# Each target starts from a copy of tests/fuzz/corpus/<target> in a temp
# folder, so new corpus entries never land in the repository. Exits 1 when
# any target crashed, leaked, timed out or failed a check; its crash input
# and log are kept and their paths printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(fuzz_config fuzz_worker_frames fuzz_messages fuzz_jsonl)
fi
build=${KHOST_FUZZ_BUILD:-build-fuzz}
jobs=${KHOST_FUZZ_JOBS:-$(nproc)}
read -r -a extra <<<"${KHOST_FUZZ_ARGS:-}"

if [ ! -f "$build/CMakeCache.txt" ]; then
  echo "fuzz: configuring $build with ${CC:-clang}"
  CC=${CC:-clang} cmake -S . -B "$build" -DKHOST_FUZZ=ON \
    -DKHOST_BUILD_TESTS=OFF >/dev/null
fi
echo "fuzz: building the fuzz targets in $build"
cmake --build "$build" --target fuzzers -j"$(nproc)" -- --no-print-directory \
  >"$build/fuzz-build.log" 2>&1 || {
  cat "$build/fuzz-build.log" >&2
  exit 1
}

work=$(mktemp -d /tmp/khost-fuzz.XXXXXX)
# UBSan aborts by itself (-fno-sanitize-recover); ask for stack traces.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

fuzz_one() {
  local t=$1 dir=$work/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$dir/corpus/"
  # -close_fd_mask=2 mutes khost's log (fd 2); libFuzzer, the sanitizers
  # and the targets' own checks report on a copy of stderr.
  local rc=0
  "$build/fuzz/$t" -max_total_time="$secs" -print_final_stats=1 \
    -close_fd_mask=2 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$dir/artifacts/" "${extra[@]}" "$dir/corpus" \
    >"$dir/log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
}

echo "fuzz: ${targets[*]}, ${secs} s each, $jobs at a time (work: $work)"
running=0
for t in "${targets[@]}"; do
  if [ ! -x "$build/fuzz/$t" ]; then
    echo "fuzz: no such target: $t" >&2
    exit 2
  fi
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait

failed=0
printf '%-20s %12s %9s %6s %7s %7s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  dir=$work/$t
  rc=$(cat "$dir/rc")
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$dir/log" | tail -1)
  # The last status line ("#N DONE cov: X ft: Y corp: Z/...") has the
  # coverage: cov = edges reached, ft = features.
  status=$(grep -E '^#[0-9]+' "$dir/log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$status")
  result=ok
  if [ "$rc" != 0 ] || [ -n "$(ls -A "$dir/artifacts")" ]; then
    result="FAILED (exit $rc)"
    failed=1
  fi
  printf '%-20s %12s %9s %6s %7s %7s  %s\n' "$t" "${runs:-?}" "${speed:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done

if [ "$failed" -ne 0 ]; then
  for t in "${targets[@]}"; do
    dir=$work/$t
    if [ "$(cat "$dir/rc")" != 0 ] || [ -n "$(ls -A "$dir/artifacts")" ]; then
      echo "--- $t: $dir/log" >&2
      grep -vE '^#[0-9]+[[:space:]]' "$dir/log" | tail -60 >&2
      for a in "$dir"/artifacts/*; do
        [ -e "$a" ] || continue
        echo "crash input: $a (reproduce: $build/fuzz/$t $a)" >&2
      done
    fi
  done
  echo "fuzz: FAILED; everything is kept in $work" >&2
  exit 1
fi
if [ "${KHOST_FUZZ_KEEP:-0}" = 1 ]; then
  echo "fuzz: corpora and logs kept in $work"
else
  rm -rf "$work"
fi
echo "fuzz: no crash"
