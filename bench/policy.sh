#!/bin/sh
# bench/policy.sh: the policy-engine benchmark (issue 3, section 6). Builds
# bench/policy_bench.c with the flags bench/run.sh uses for the other C
# benches, runs it from the repository root (so it finds the shipped
# scripts/routing/complexity.lua) and writes the section issue3 of
# bench/RESULTS.md (unless BENCH_NO_WRITE=1): the C -> Lua routing call in
# ns per call (median of 11 runs x 200,000 calls; fast path and JSON path;
# the shipped complexity.lua, an inline keyword classifier, and a trivial
# hook for the engine's own cost) and the reload latency over 100 reloads
# (median, p99), against the targets. About 20 s.
# Knobs: BUILD (build), CC (cc), BENCH_QUICK=1 (policy_bench --quick),
# BENCH_NO_WRITE.
set -eu
cd "$(dirname "$0")/.."
B=${BUILD:-build}
OUT=$B/bench
mkdir -p "$OUT"
[ -f "$B/liborch.a" ] || make -s all
PKGS="lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto"
CFLAGS_B="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wundef -Wwrite-strings -Wmissing-declarations -Iruntime -Ibench"
CC=${CC:-cc}
$CC $CFLAGS_B $(pkg-config --cflags $PKGS) -o "$OUT/policy_bench" bench/policy_bench.c \
  "$B/liborch.a" $(pkg-config --libs $PKGS) -lm -pthread

CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
MACHINE="$(nproc) cores ($CPU), $(uname -sr), gcc $(gcc -dumpfullversion), Lua $(pkg-config --modversion lua5.4)"
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

QUICK=""
[ "${BENCH_QUICK:-0}" = 1 ] && QUICK=--quick
echo "== policy engine: $OUT/policy_bench $QUICK"
"$OUT/policy_bench" $QUICK | tee "$OUT/policy.txt"
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

v() {
  x=$(awk -v k="$1" '$1 == k { print $2; exit }' "$OUT/policy.txt")
  echo "${x:-n/a}"
}
TRIV=$(v route_call_trivial_hook_ns_median)
TRIVJ=$(v route_call_trivial_json_ns_median)
KW=$(v route_call_fast_path_ns_median)
KWJ=$(v route_call_json_path_ns_median)
SHIP=$(v route_call_shipped_complexity_ns_median)
SHIPJ=$(v route_call_shipped_json_ns_median)
SHIPL=$(v route_call_shipped_plain_lua_ns_median)
BARE=$(v bare_lua_pcall_ns_median)
RMED=$(v reload_latency_ms_median)
RP99=$(v reload_latency_ms_p99)
RSYNC=$(v reload_check_publish_ms_median)
NREL=$(sed -nE 's/^reload_latency_ms_median .*\(([0-9]+) reloads.*/\1/p' "$OUT/policy.txt")
if [ -n "$QUICK" ]; then RUNS="3 runs x 20,000 calls"; else RUNS="11 runs x 200,000 calls"; fi

# met CMP VALUE LIMIT: "yes" when VALUE <= LIMIT, else "**no**"
met() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a") print "n/a"; else print (a + 0 <= b + 0) ? "yes" : "**no**" }'; }
us() { awk -v a="$1" 'BEGIN { if (a == "n/a") print "n/a"; else printf "%.2f", a / 1000 }'; }

SECTION=$OUT/issue3.md
{
  echo "Machine: $MACHINE. Date: $DATE. Commit: $REV. Load average at the start: $LOAD0 (after: $LOAD1)."
  echo
  echo "\`bench/policy.sh\` (\`bench/policy_bench.c\`, gcc -O2, liborch.a). A routing"
  echo "call is C -> Lua through the engine (\`orch__policy_call_fields\`, the fast"
  echo "path: a 5-field task table built from C strings; \`orch__policy_call_string\`,"
  echo "the JSON path: the same fields from a \`json_t\`), under the instruction"
  echo "budget (armed by the watchdog in a call that runs over 2 ms, so these"
  echo "short calls run without the count hook: docs/policy.md), \`classify\` returning"
  echo "a tier string; ns per call, median of $RUNS."
  echo "Hooks: the shipped \`scripts/routing/complexity.lua\` (word-start keyword"
  echo "matching with the engine's C matcher \`orch.keywords\`), the same script on"
  echo "its plain-Lua path (\`string.find\`s, as a plain lua5.4 runs it); an inline"
  echo "keyword classifier (\`lower\` + 16 plain \`find\`s, the issue's sketch); a"
  echo "trivial hook returning at once, i.e. the engine's own cost."
  echo
  echo "| routing call (5-field task) | fast path (ns) | JSON path (ns) | target <= 1 us (fast path) |"
  echo "|---|---:|---:|---|"
  echo "| shipped \`scripts/routing/complexity.lua\` | $SHIP | $SHIPJ | $(met "$SHIP" 1000) |"
  echo "| the same script on its plain-Lua path | $SHIPL | | $(met "$SHIPL" 1000) |"
  echo "| inline keyword classifier | $KW | $KWJ | $(met "$KW" 1000) |"
  echo "| trivial hook (engine overhead) | $TRIV | $TRIVJ | $(met "$TRIV" 1000) |"
  echo "| bare \`lua_pcall\` of an empty function, for scale | $BARE | | |"
  echo
  echo "Reload latency: \`routing/complexity.lua\` renamed into place -> both of 2"
  echo "worker threads (each with its own Lua state, syncing at a \"step boundary\""
  echo "every 100 us) serving the new generation; ${NREL:-?} reloads, the 20 ms debounce of"
  echo "the file watch included. Check and publish alone (\`orch__policy_rescan\`, no"
  echo "debounce): median $RSYNC ms."
  echo
  echo "| reload | median (ms) | p99 (ms) | target p99 <= 100 ms |"
  echo "|---|---:|---:|---|"
  echo "| file write -> every worker on the new generation | $RMED | $RP99 | $(met "$RP99" 100) |"
  echo
  echo "Targets (issue 3 section 6): routing call <= 1 us median: the engine's own"
  echo "cost, $(us "$TRIV") us ($(us "$TRIVJ") us by the JSON path), is $( [ "$(met "$TRIV" 1000)" = yes ] && echo "within it" || echo "**over it**");"
  echo "with the shipped \`complexity.lua\` a call takes $(us "$SHIP") us ($(us "$SHIPJ") us by the JSON path),"
  if [ "$(met "$SHIP" 1000)" = yes ]; then
    echo "so the target is met for the shipped hook too."
  else
    echo "so the target is **not met** for the shipped hook."
  fi
  echo "Reload p99 $RP99 ms <= 100 ms: $(met "$RP99" 100)."
  echo "Before orch.keywords and the late-armed budget (commit 51536ba, same"
  echo "machine): overhead 283 ns, inline 1823 / 1970 ns, shipped 2380 / 2546 ns."
  echo "The late-armed budget alone takes about 0.1-0.2 us off a call with a few"
  echo "dozen instructions (the count hook's per-instruction trap, docs/policy.md);"
  echo "the rest is the C matcher doing in one pass what the script did with 16"
  echo "\`find\`s and its per-call list check."
  echo
} >"$SECTION"

if [ "${BENCH_NO_WRITE:-0}" != 1 ]; then
  sh bench/section.sh issue3 "Issue 3: policy engine" <"$SECTION"
  echo "== wrote bench/RESULTS.md (section issue3)"
else
  cat "$SECTION"
fi
