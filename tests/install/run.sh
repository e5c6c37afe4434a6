#!/usr/bin/env bash
# The install test (ctest: install). From a build folder, plain or ASan:
#  1. DESTDIR=$tmp/root cmake --install BUILD --prefix /usr: every file of
#     the layout is there, the units name /usr/bin/khost and
#     /etc/khost/khost.ini, the man page's version is khost's;
#  2. the INSTALLED khost runs the INSTALLED file_sink.so (named relative
#     to a config in the DESTDIR tree) on the embedded mock cluster and
#     handles all N seeded messages, then stops cleanly on SIGTERM;
#  3. the installed example config: in the DESTDIR tree its file_sink.so
#     is found nowhere, and the error names both paths tried;
#  4. a second, small build configured with CMAKE_INSTALL_PREFIX=$P and
#     installed there: its khost finds file_sink.so of the same example
#     in its compiled-in plugin folder ($P/lib/khost/plugins);
#  5. the SDK from outside the tree: a one-file plugin built with
#     `cc $(pkg-config --cflags --libs khost-plugin)` and the template
#     (plugins/template, copied out) built with CMake's find_package(khost),
#     both against the DESTDIR tree only; plugin-info and check-config of
#     the installed khost accept them, and it runs each on the mock
#     cluster until every seeded message is handled;
#  6. systemd-analyze verify of khost.service and khost@demo.service
#     (copies whose paths point into the DESTDIR tree), systemd-sysusers
#     --dry-run of the sysusers.d file, and the man page through
#     groff -ww and man --warnings: any line any of them prints fails.
# usage: tests/install/run.sh BUILD_DIR
set -euo pipefail

build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
src=$(sed -n 's/^khost_SOURCE_DIR:STATIC=//p' "$build/CMakeCache.txt")
configured_prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
cc=$(sed -n 's/^CMAKE_C_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")
version=$("$build/khost" --version | awk '{print $2}')
seed=200

tmp=$(mktemp -d /tmp/khost-install.XXXXXX)
host_pid=
cleanup() {
  if [ -n "$host_pid" ] && kill -0 "$host_pid" 2>/dev/null; then
    kill -KILL "$host_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "install test FAILED: $*" >&2
  exit 1
}
t0=$EPOCHREALTIME
step() { echo "== $* ($(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $t0 }") s)"; }

# --- 1. the layout ----------------------------------------------------
step "DESTDIR install with --prefix /usr"
root=$tmp/root
DESTDIR=$root cmake --install "$build" --prefix /usr >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install"; }
if [ "$configured_prefix" != /usr ]; then
  # Plugins land where this khost does not look for them: said so.
  tr -s ' \n' '  ' <"$tmp/install.log" |
    grep -q "looks for plugins in $configured_prefix/lib/khost/plugins" ||
    { cat "$tmp/install.log" >&2; fail "no warning about the prefix"; }
fi
for f in usr/bin/khost usr/libexec/khost/khost-worker \
  usr/lib/khost/plugins/file_sink.so usr/lib/khost/plugins/fault.so \
  usr/lib/khost/plugins/noop.so usr/include/khost/plugin.h \
  etc/khost/khost.ini.example \
  usr/lib/systemd/system/khost.service usr/lib/systemd/system/khost@.service \
  usr/lib/sysusers.d/khost.conf usr/share/man/man1/khost.1 \
  usr/share/pkgconfig/khost-plugin.pc usr/share/cmake/khost/khostConfig.cmake \
  usr/share/cmake/khost/khostConfigVersion.cmake; do
  [ -f "$root/$f" ] || fail "missing $f"
done
[ -x "$root/usr/bin/khost" ] || fail "usr/bin/khost is not executable"
[ -x "$root/usr/libexec/khost/khost-worker" ] || fail "usr/libexec/khost/khost-worker is not executable"
# The worker executable needs none of the host's libraries.
libs=$(ldd "$root/usr/libexec/khost/khost-worker" | grep -c -E 'rdkafka|systemd|microhttpd|jansson|inih' || true)
[ "$libs" -eq 0 ] || fail "khost-worker links host libraries: $(ldd "$root/usr/libexec/khost/khost-worker")"
unit=$root/usr/lib/systemd/system
grep -qx 'ExecStart=/usr/bin/khost run -c /etc/khost/khost.ini' "$unit/khost.service" ||
  fail "khost.service ExecStart: $(grep ExecStart "$unit/khost.service")"
grep -qx 'ExecReload=/usr/bin/khost reload -c /etc/khost/khost.ini --timeout 80' "$unit/khost.service" ||
  fail "khost.service ExecReload"
grep -qx 'ExecStart=/usr/bin/khost run -c /etc/khost/%i.ini --socket /run/khost/%i/khost.sock' \
  "$unit/khost@.service" || fail "khost@.service ExecStart"
grep -q '@[A-Z_]*@' "$unit/khost.service" "$unit/khost@.service" &&
  fail "a unit has an unreplaced @VAR@"
out=$("$root/usr/bin/khost" --version)
[ "$out" = "$("$build/khost" --version)" ] || fail "installed khost --version: $out"
grep -q "^\.TH KHOST 1 [0-9-]* \"khost $version\"" "$root/usr/share/man/man1/khost.1" ||
  fail "the man page's .TH does not say khost $version"

# --- 2. the installed khost on the installed plugins ------------------
step "installed khost, installed file_sink.so, mock cluster, $seed messages"
cat >"$root/etc/khost/mock.ini" <<EOF
[host]
brokers = mock
mock_partitions = 2
mock_seed = $seed
[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500
[pipeline.events]
topics = events
group = khost-install-test
plugin = ../../usr/lib/khost/plugins/file_sink.so
workers = 2
shutdown_timeout_ms = 5000
[pipeline.events.config]
path = $tmp/events.jsonl
EOF
"$root/usr/bin/khost" run -c "$root/etc/khost/mock.ini" --socket "$tmp/k.sock" \
  >"$tmp/run.log" 2>&1 &
host_pid=$!
distinct() {
  grep -o '"partition":[0-9]*,"offset":[0-9]*' "$tmp/events.jsonl" 2>/dev/null |
    sort -u | wc -l
}
for _ in $(seq 1 200); do
  [ "$(distinct)" -ge $seed ] && break
  kill -0 $host_pid 2>/dev/null || break
  sleep 0.1
done
n=$(distinct)
[ "$n" -eq $seed ] || { cat "$tmp/run.log" >&2; fail "handled $n of $seed messages"; }
# Its workers are the installed khost-worker (found from ../libexec).
workers=0
for w in $(cat /proc/$host_pid/task/*/children 2>/dev/null); do
  exe=$(readlink "/proc/$w/exe" || true)
  [ "$exe" = "$root/usr/libexec/khost/khost-worker" ] ||
    fail "worker $w runs $exe, not the installed khost-worker"
  workers=$((workers + 1))
done
# 2 workers and the default spare (spare_workers = 1), started once both
# workers were READY, long before the messages were all handled.
[ "$workers" -eq 3 ] || fail "found $workers worker processes of the installed khost, not 3 (2 workers, 1 spare)"
grep -q "$root/etc/khost/../../usr/lib/khost/plugins/file_sink.so" "$tmp/run.log" ||
  { cat "$tmp/run.log" >&2; fail "the log does not name the installed plugin"; }
status=$("$root/usr/bin/khost" status --socket "$tmp/k.sock") ||
  fail "installed khost status: $status"
echo "$status" | grep -q '^pipeline=events plugin=file_sink ' || fail "status: $status"
kill -TERM $host_pid
rc=0
wait $host_pid || rc=$?
host_pid=
[ $rc -eq 0 ] || { cat "$tmp/run.log" >&2; fail "khost exit status $rc after SIGTERM"; }
echo "handled $n of $seed messages, exit status $rc"

# --- 3. the example in the DESTDIR tree -------------------------------
step "check-config of the installed example, in the DESTDIR tree"
installed_dir=$configured_prefix/lib/khost/plugins
if [ -e "$installed_dir/file_sink.so" ]; then
  echo "skipped: $installed_dir/file_sink.so exists on this machine"
else
  rc=0
  KAFKA_BROKERS=b1:9092,b2:9092 "$root/usr/bin/khost" check-config \
    -c "$root/etc/khost/khost.ini.example" >"$tmp/check.out" 2>&1 || rc=$?
  [ $rc -eq 2 ] || { cat "$tmp/check.out" >&2; fail "exit status $rc, not 2"; }
  grep -q "plugin of \[pipeline.events\]: $root/etc/khost/file_sink.so: No such file or directory.* (also tried $installed_dir/file_sink.so)\$" \
    "$tmp/check.out" || { cat "$tmp/check.out" >&2; fail "the error does not name both paths"; }
fi

# --- 4. a real prefix: the compiled-in plugin folder ------------------
step "a build for the prefix $build/install-check/prefix"
check=$build/install-check
prefix=$check/prefix
rm -rf "$prefix"
# Plain and unoptimized, tests off: only khost and its plugins. Kept in
# the build folder, so a second run only rebuilds what changed.
cmake -S "$src" -B "$check/build" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_INSTALL_PREFIX="$prefix" -DKHOST_BUILD_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS=-O0 >"$tmp/check-build.log" 2>&1 &&
  cmake --build "$check/build" -j2 >>"$tmp/check-build.log" 2>&1 &&
  cmake --install "$check/build" >>"$tmp/check-build.log" 2>&1 ||
  { cat "$tmp/check-build.log" >&2; fail "build and install for $prefix"; }
grep -q "CMake Warning" "$tmp/check-build.log" &&
  { cat "$tmp/check-build.log" >&2; fail "warnings installing to the configured prefix"; }
grep -qx "ExecStart=$prefix/bin/khost run -c $prefix/etc/khost/khost.ini" \
  "$prefix/lib/systemd/system/khost.service" || fail "units of the prefix build"
KAFKA_BROKERS=b1:9092,b2:9092 "$prefix/bin/khost" check-config \
  -c "$prefix/etc/khost/khost.ini.example" >"$tmp/check.out" 2>&1 ||
  { cat "$tmp/check.out" >&2; fail "check-config of the example installed to $prefix"; }
grep -q "^pipeline events: topics events group khost-events plugin file_sink " \
  "$tmp/check.out" || { cat "$tmp/check.out" >&2; fail "check-config output"; }
echo "$prefix/etc/khost/khost.ini.example: file_sink.so found in $prefix/lib/khost/plugins"

# --- 5. the plugin SDK, from outside the tree --------------------------
step "SDK: pkg-config one-file plugin and the CMake template, out of tree"
sdk=$tmp/sdk
mkdir -p "$sdk"
export PKG_CONFIG_PATH=$root/usr/share/pkgconfig
hdr=$src/include/khost/plugin.h
abi="$(sed -n 's/^#define KHOST_ABI_MAJOR //p' "$hdr").$(sed -n 's/^#define KHOST_ABI_MINOR //p' "$hdr")"
[ "$(pkg-config --variable=abi_major khost-plugin).$(pkg-config --variable=abi_minor khost-plugin)" = "$abi" ] ||
  fail "pkg-config abi variables"
[ "$(pkg-config --modversion khost-plugin)" = "$version" ] || fail "pkg-config version"
pkg-config --variable=plugindir khost-plugin | grep -q "/lib/khost/plugins$" ||
  fail "pkg-config plugindir: $(pkg-config --variable=plugindir khost-plugin)"
cp "$src/tests/install/hello.c" "$sdk/hello.c"
# The installed header only: no -I into the source tree.
# shellcheck disable=SC2046 # pkg-config's words are flags
gcc -Wall -Wextra -Werror "$sdk/hello.c" $(pkg-config --cflags --libs khost-plugin) \
  -o "$sdk/hello.so" 2>"$tmp/hello.log" || { cat "$tmp/hello.log" >&2; fail "cc hello.c"; }
cp -r "$src/plugins/template" "$sdk/template"
cmake -S "$sdk/template" -B "$sdk/template/build" -DCMAKE_PREFIX_PATH="$root/usr" \
  -DCMAKE_C_COMPILER=gcc >"$tmp/template.log" 2>&1 &&
  cmake --build "$sdk/template/build" >>"$tmp/template.log" 2>&1 ||
  { cat "$tmp/template.log" >&2; fail "the template does not build"; }
for so in "$sdk/hello.so" "$sdk/template/build/batch_sink.so"; do
  out=$("$root/usr/bin/khost" plugin-info "$so") || fail "plugin-info $so: $out"
  echo "$out" | grep -q "^abi: *$abi (host speaks" || fail "plugin-info $so: $out"
  exported=$(nm -D --defined-only "$so" | awk '$2 == "T" {print $3}')
  [ "$exported" = khost_plugin_entry ] || fail "$so exports: $exported"
done
# Each passes its plugin-test cases under the installed khost, no Kafka:
# the template its own (ctest: tests/*.jsonl against their .expect), the
# one-file plugin a file of its own.
ctest --test-dir "$sdk/template/build" --output-on-failure >"$tmp/template.ctest" 2>&1 ||
  { cat "$tmp/template.ctest" >&2; fail "the template's plugin-test cases"; }
grep -q "100% tests passed, 0 tests failed out of 2" "$tmp/template.ctest" ||
  { cat "$tmp/template.ctest" >&2; fail "the template's plugin-test cases did not all run"; }
for i in 0 1 2 3 4; do printf '{"partition": %d, "value": "hello %d"}\n' $((i % 2)) $i; done >"$sdk/hello.jsonl"
"$root/usr/bin/khost" plugin-test "$sdk/hello.so" --config "count_file=$sdk/hello.pt.count" \
  --input "$sdk/hello.jsonl" >"$tmp/hello.pt" 2>"$tmp/hello.pt.err" ||
  { cat "$tmp/hello.pt" "$tmp/hello.pt.err" >&2; fail "plugin-test hello.so"; }
grep -q '^{"summary":{"messages":5,"ack":5,' "$tmp/hello.pt" ||
  { cat "$tmp/hello.pt" >&2; fail "plugin-test hello.so: not 5 of 5 acked"; }
echo "plugin-test: the template's 2 cases pass, hello.so acks 5 of 5"
# Each runs under the installed khost until the seeded messages are in.
run_sdk_plugin() { # NAME SO CONFIG_LINES OUTPUT_FILE
  printf '%s\n' "[host]" "brokers = mock" "mock_partitions = 2" \
    "mock_seed = $seed" "[pipeline.$1]" "topics = $1" "group = khost-sdk-$1" \
    "plugin = $2" "workers = 2" "shutdown_timeout_ms = 5000" \
    "[pipeline.$1.config]" "$3" >"$sdk/$1.ini"
  "$root/usr/bin/khost" check-config -c "$sdk/$1.ini" >"$tmp/$1.check" 2>&1 ||
    { cat "$tmp/$1.check" >&2; fail "check-config of $1"; }
  "$root/usr/bin/khost" run -c "$sdk/$1.ini" --socket "$sdk/$1.sock" \
    >"$tmp/$1.log" 2>&1 &
  host_pid=$!
  for _ in $(seq 1 200); do
    [ "$(sort -u "$4" 2>/dev/null | wc -l)" -ge $seed ] && break
    kill -0 $host_pid 2>/dev/null || break
    sleep 0.1
  done
  n=$(sort -u "$4" 2>/dev/null | wc -l)
  kill -TERM $host_pid
  rc=0
  wait $host_pid || rc=$?
  host_pid=
  [ "$n" -eq $seed ] || { cat "$tmp/$1.log" >&2; fail "$1 handled $n of $seed"; }
  [ $rc -eq 0 ] || { cat "$tmp/$1.log" >&2; fail "$1: khost exit status $rc"; }
  echo "$1: $n of $seed distinct messages, exit status $rc"
}
run_sdk_plugin hello "$sdk/hello.so" "count_file = $sdk/hello.count" "$sdk/hello.count"
run_sdk_plugin batch "$sdk/template/build/batch_sink.so" \
  "output = $sdk/batch.out" "$sdk/batch.out"
unset PKG_CONFIG_PATH

# --- 6. units, sysusers.d, man page -----------------------------------
step "systemd-analyze verify, systemd-sysusers, man page lint"
# verify checks that ExecStart's binary exists: copies that point into
# the DESTDIR tree. Documentation=man:khost(1) is checked against it too.
units=$tmp/units
mkdir "$units"
sed "s|=/usr/bin/khost |=$root/usr/bin/khost |" "$unit/khost.service" >"$units/khost.service"
sed "s|=/usr/bin/khost |=$root/usr/bin/khost |" "$unit/khost@.service" >"$units/khost@demo.service"
for u in khost.service khost@demo.service; do
  out=$(MANPATH=$root/usr/share/man systemd-analyze verify --man=yes "$units/$u" 2>&1) ||
    fail "systemd-analyze verify $u: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $u says: $out"
done
out=$(systemd-sysusers --dry-run --root="$root" 2>&1) || fail "systemd-sysusers: $out"
echo "$out" | grep -q "^Creating user 'khost'" || fail "systemd-sysusers: $out"
if echo "$out" | grep -v "^Creating \|^Would write " | grep -q .; then
  fail "systemd-sysusers says: $out"
fi
page=$root/usr/share/man/man1/khost.1
out=$(LC_ALL=C.UTF-8 groff -man -ww -z "$page" 2>&1) || fail "groff: $out"
[ -z "$out" ] || fail "groff -man -ww says: $out"
out=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null) ||
  fail "man --warnings: $out"
[ -z "$out" ] || fail "man --warnings says: $out"

step "install test OK"
