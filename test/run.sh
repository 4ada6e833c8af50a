#!/bin/sh
# make test: builds everything (gcc, then clang), runs the C tests, the
# script check and the busted specs, then all of it again under
# AddressSanitizer + UndefinedBehaviorSanitizer, against a throwaway
# PostgreSQL started here. Ends with one line "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PASS=0; FAIL=0; FAILED_SUITES=""
LOG=${ORCH_TEST_LOG:-$ROOT/build/test-logs}
mkdir -p "$LOG"

count() { # suite passed failed
  PASS=$((PASS + $2)); FAIL=$((FAIL + $3))
  [ "$3" -gt 0 ] && FAILED_SUITES="$FAILED_SUITES $1"
  echo "== $1: $2 passed, $3 failed"
}

# one-shot check: suite name, command...
check() {
  name=$1; shift
  if "$@" >"$LOG/$name.log" 2>&1; then count "$name" 1 0
  else tail -n 40 "$LOG/$name.log"; count "$name" 0 1; fi
}

# busted: suite name, build dir, extra args...
run_busted() {
  name=$1; bdir=$2; shift 2
  out="$LOG/$name.log"
  ORCH_DB="sqlite:$LOG/$name.db" ORCH_BUILD="$ROOT/$bdir" ORCH_BIN="$ROOT/$bdir/orchestrate" \
  LUA_CPATH="$ROOT/$bdir/?.so;;" LUA_PATH="$ROOT/scripts/?.lua;$ROOT/spec/?.lua;;" \
    env ${PRELOAD:+LD_PRELOAD=$PRELOAD} busted --lua=lua5.4 -o utfTerminal "$@" spec >"$out" 2>&1
  line=$(grep -E '[0-9]+ success' "$out" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g')
  s=$(echo "$line" | grep -oE '[0-9]+ success' | grep -oE '[0-9]+')
  f=$(echo "$line" | grep -oE '[0-9]+ failure' | grep -oE '[0-9]+')
  e=$(echo "$line" | grep -oE '[0-9]+ error' | grep -oE '[0-9]+')
  if [ -z "$s" ]; then tail -n 60 "$out"; count "$name" 0 1; return; fi
  [ "$f$e" != "00" ] && sed -n '/Failure\|Error/,$p' "$out" | head -n 120
  count "$name" "$s" $((f + e))
}

# C tests print "N passed, N failed" as their last line.
run_ctest() {
  name=$1; shift
  out="$LOG/$name.log"
  "$@" >"$out" 2>&1; rc=$?
  line=$(tail -n 1 "$out")
  p=$(echo "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\1/p')
  f=$(echo "$line" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed.*/\2/p')
  if [ -z "$p" ]; then tail -n 40 "$out"; count "$name" 0 1; return; fi
  [ "$f" -gt 0 ] || [ $rc -ne 0 ] && grep -E 'FAIL|ERROR|Sanitizer|runtime error' "$out" | head -n 40
  [ $rc -ne 0 ] && [ "$f" = 0 ] && f=1
  count "$name" "$p" "$f"
}

echo "== building (gcc)"
if ! make -s all build/test_c >"$LOG/build.log" 2>&1; then
  cat "$LOG/build.log"; echo "0 passed, 1 failed"; exit 1
fi
check build-clang make -s BUILD=build-clang CC=clang all build-clang/test_c

# A throwaway PostgreSQL for the store specs (test/pg.sh start|stop).
if [ -x test/pg.sh ]; then
  if PGURL=$(test/pg.sh start "$ROOT/build/pgtest" 2>"$LOG/pg.log"); then
    export ORCH_TEST_PG="$PGURL"
    trap 'test/pg.sh stop "$ROOT/build/pgtest" >/dev/null 2>&1' EXIT INT TERM
  else
    cat "$LOG/pg.log"; count postgres-start 0 1
  fi
fi

check script-check ./build/orchestrate check scripts
run_ctest c-tests ./build/test_c
run_busted specs build

echo "== building (AddressSanitizer + UndefinedBehaviorSanitizer)"
if make -s BUILD=build-asan SAN=1 all build-asan/test_c >"$LOG/build-asan.log" 2>&1; then
  ASAN_LIB=$(gcc -print-file-name=libasan.so)
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export LSAN_OPTIONS=suppressions=$ROOT/test/lsan.supp:print_suppressions=0
  export ORCH_SKIP_SLOW=1
  run_ctest c-tests-asan ./build-asan/test_c
  PRELOAD=$ASAN_LIB run_busted specs-asan build-asan --exclude-tags=slow,nosan
else
  tail -n 60 "$LOG/build-asan.log"; count build-asan 0 1
fi

[ -n "$FAILED_SUITES" ] && echo "failed suites:$FAILED_SUITES (logs in $LOG)"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
