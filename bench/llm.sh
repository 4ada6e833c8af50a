#!/bin/sh
# llm.sh: the LLM fan-out benchmark (issue 4, section 8). Builds
# build/llm_bench (bench/llm_bench.c) against build/liborch.a with the flags
# bench/run.sh uses for the other C benches, starts the mock LLM server in
# its own process (llm_bench serve), then runs, alternating, against that
# same mock: orchestrate's client (llm_bench run: llm.c over libcurl multi
# + libuv) and Node.js's built-in fetch (llm_fetch.mjs). For each
# concurrency in CS: a warm-up, then ROUNDS rounds of each client, the best
# round of each (by throughput) reported. Prints a table and writes the
# section issue4 of bench/RESULTS.md (unless BENCH_NO_WRITE=1); the targets
# are judged at the first concurrency of CS (the issue's 1,000). With
# --md FILE also appends the bare table to FILE. About 40 s.
# Env: N (10000), CS ("1000 250"; C=X alone means CS=X), LATENCY (20),
# ROUNDS (3), BUILD (build), CC (cc), BENCH_NO_WRITE.
set -eu
cd "$(dirname "$0")/.."
N=${N:-10000}; LATENCY=${LATENCY:-20}; ROUNDS=${ROUNDS:-3}
CS=${CS:-${C:-1000 250}}
MD=""
[ "${1:-}" = "--md" ] && MD=$2
BUILD=${BUILD:-build}
OUTD=$BUILD/bench
mkdir -p "$OUTD"
[ -f "$BUILD/liborch.a" ] || make -s all
PKGS="lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto"
CFLAGS_B="-std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Wshadow -Wundef -Wwrite-strings -Wmissing-declarations -Iruntime -Ibench"
CC=${CC:-cc}
$CC $CFLAGS_B $(pkg-config --cflags $PKGS) -o "$BUILD/llm_bench" bench/llm_bench.c \
  "$BUILD/liborch.a" $(pkg-config --libs $PKGS) -lm -pthread
ulimit -n 20000 2>/dev/null || true

CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
MACHINE="$(nproc) cores ($CPU), $(uname -sr), gcc $(gcc -dumpfullversion), libcurl $(pkg-config --modversion libcurl), libuv $(pkg-config --modversion libuv), Node.js $(node --version)"
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)

OUT=$(mktemp -d)
MOCK=""
cleanup() {
  if [ -n "$MOCK" ]; then kill "$MOCK" 2>/dev/null || true; wait "$MOCK" 2>/dev/null || true; MOCK=""; fi
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
"$BUILD/llm_bench" serve 0 >"$OUT/port" &
MOCK=$!
i=0
while [ ! -s "$OUT/port" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
PORT=$(head -n 1 "$OUT/port")
[ -n "$PORT" ] || { echo "llm.sh: the mock did not start" >&2; exit 1; }
BASE="http://127.0.0.1:$PORT"
echo "== LLM fan-out: mock on $BASE, N=$N, C in: $CS, latency $LATENCY ms, best of $ROUNDS"

# the mock's CPU time (utime + stime, in clock ticks) while it serves
# orchestrate's rounds, and how many requests those were
ticks() { awk '{ print $14 + $15 }' "/proc/$MOCK/stat" 2>/dev/null || echo 0; }
MTICKS=0
SERVED=0
FILES=""
for c in $CS; do
  # warm-up (connections, page cache), then ROUNDS of each, alternating
  "$BUILD/llm_bench" run "$BASE" 2000 "$c" "$LATENCY" >/dev/null || true
  r=0
  while [ $r -lt "$ROUNDS" ]; do
    t=$(ticks)
    "$BUILD/llm_bench" run "$BASE" "$N" "$c" "$LATENCY" | tee -a "$OUT/c$c.jsonl" || true
    MTICKS=$((MTICKS + $(ticks) - t)); SERVED=$((SERVED + N))
    node bench/llm_fetch.mjs "$BASE" "$N" "$c" "$LATENCY" | tee -a "$OUT/node$c.jsonl" || true
    r=$((r + 1))
  done
  FILES="$FILES $OUT/c$c.jsonl $OUT/node$c.jsonl"
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
MOCKUS=$(awk -v t="$MTICKS" -v hz="$(getconf CLK_TCK)" -v n="$SERVED" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
kill "$MOCK" 2>/dev/null || true; wait "$MOCK" 2>/dev/null || true; MOCK=""

# the best round of each file by throughput: a table on stdout, one
# "SUM key=value..." line per row into $OUT/sum
cat >"$OUT/table.lua" <<'LUA'
local cjson = require "cjson"
local function best(path)
  local b
  local f = io.open(path)
  if not f then return nil end
  for line in f:lines() do
    local ok, t = pcall(cjson.decode, line)
    if ok and type(t) == "table" and (not b or t.throughput > b.throughput) then b = t end
  end
  f:close()
  return b
end
local sum = assert(io.open(arg[1], "w"))
print("| client | requests | in flight | ideal (req/s) | throughput (req/s) | of ideal | added p50 (ms) | added p99 (ms) | peak RSS / in flight (KiB) | CPU / request (us) | failed |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for i = 2, #arg do
  local t = best(arg[i])
  if t then
    local orch = t.client:find("orchestrate", 1, true) ~= nil
    print(string.format("| %s | %d | %d | %d | %d | %.1f%% | %.2f | %.2f | %.1f | %.1f | %d |",
      orch and "orchestrate (llm.c: libcurl multi + libuv)" or t.client, t.requests,
      t.concurrency, t.ideal, t.throughput, t.ratio * 100, t.added_p50_ms,
      t.added_p99_ms, t.kib_per_inflight, t.cpu_us_per_req or 0, t.failed))
    sum:write(string.format("SUM who=%s c=%d tput=%d ratio=%.3f p50=%.2f p99=%.2f kib=%.1f cpu=%.1f failed=%d\n",
      orch and "orch" or "node", t.concurrency, t.throughput, t.ratio, t.added_p50_ms,
      t.added_p99_ms, t.kib_per_inflight, t.cpu_us_per_req or 0, t.failed))
  end
end
sum:close()
LUA
TABLE=$(lua5.4 "$OUT/table.lua" "$OUT/sum" $FILES)
echo "$TABLE"
if [ -n "$MD" ]; then
  {
    echo
    echo "## LLM fan-out ($(date -u +%Y-%m-%d), $(nproc) cores, mock latency ${LATENCY} ms, best of $ROUNDS)"
    echo
    echo "$TABLE"
  } >>"$MD"
fi

# the targets, at the first concurrency of CS
C1=${CS%% *}
get() { awk -v w="$1" -v c="$C1" -v k="$2" '
  { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if (v["who"] == w && v["c"] == c) { print v[k]; exit } }' "$OUT/sum"; }
OT=$(get orch tput); OR=$(get orch ratio); OP50=$(get orch p50); OK=$(get orch kib)
OCPU=$(get orch cpu)
CEIL=$(awk -v a="${OCPU:-0}" -v b="$MOCKUS" -v n="$(nproc)" 'BEGIN { if (a + b > 0) printf "%d", n * 1e6 / (a + b); else print "?" }')
NT=$(get node tput)
yn() { awk "BEGIN { print ($1) ? \"yes\" : \"**no**\" }"; }
M1=$(yn "${OR:-0} >= 0.9"); M2=$(yn "${OP50:-1e9} <= 1"); M3=$(yn "${OK:-1e9} <= 32")
M4=$(yn "${OT:-0} > ${NT:-0}")
PCT=$(awk -v r="${OR:-0}" 'BEGIN { printf "%.1f", r * 100 }')
X=$(awk -v a="${OT:-0}" -v b="${NT:-1}" 'BEGIN { printf "%.1f", a / b }')

SECTION=$OUTD/issue4.md
{
  echo "Machine: $MACHINE. Date: $DATE. Commit: $REV. Load average at the start: $LOAD0 (after: $LOAD1)."
  echo
  echo "\`bench/llm.sh\`: $N chat completions per run, a fixed number in flight,"
  echo "against the project's mock LLM (\`orch_mock_start\`, run alone in its own"
  echo "process, \`build/llm_bench serve\`) answering each after $LATENCY ms, over HTTP on"
  echo "loopback. orchestrate's client is \`build/llm_bench run\`: each call through"
  echo "llm.c (request JSON built with jansson, libcurl multi on a libuv loop,"
  echo "response parsed, usage read). The peer is Node.js's built-in \`fetch\`"
  echo "(\`bench/llm_fetch.mjs\`, the same fan-out and the same JSON work), in the"
  echo "same run against the same mock, alternating with it: a warm-up, then"
  echo "$ROUNDS rounds of each, the best round of each by throughput shown. Ideal"
  echo "= in flight / latency; *added* latency = a call's time minus the mock's"
  echo "$LATENCY ms; peak RSS per request in flight = (peak RSS - RSS before the"
  echo "fan-out) / in flight. Client and mock share the machine's $(nproc) cores."
  echo
  echo "$TABLE"
  echo
  echo "| target (issue 4 section 8, at $C1 in flight) | measured | met |"
  echo "|---|---|---|"
  echo "| >= 90% of the ideal throughput | $PCT% ($OT req/s) | $M1 |"
  echo "| <= 1 ms p50 added latency | $OP50 ms | $M2 |"
  echo "| <= 32 KiB RSS per request in flight | $OK KiB | $M3 |"
  echo "| faster than the Node.js fan-out | ${X}x Node's $NT req/s | $M4 |"
  echo
  echo "At $C1 in flight the ideal is $(awk -v c="$C1" -v l="$LATENCY" 'BEGIN { printf "%d", c * 1000 / l }') req/s, more than this machine serves: the"
  echo "client spends $OCPU us of CPU per request (user + system, the table) and the"
  echo "mock $MOCKUS us (from its /proc stat, over the $SERVED requests of orchestrate's rounds),"
  echo "both on the same $(nproc) cores, which caps the pair at about $CEIL req/s even"
  echo "before the loopback's softirq time and context switches; the machine"
  echo "saturates and the queueing shows up as added latency. The lower"
  echo "concurrency shows the client where the machine keeps up. The 90% and 1 ms"
  echo "targets at $C1 in flight need the mock on other cores (or another machine)."
  echo "Earlier figures (docs/llm.md, best of 3): at 1,000 in flight 22,464 req/s"
  echo "(44.9%), added p50 / p99 19.05 / 76.62 ms, 17.6 KiB per request, Node fetch"
  echo "2,638 req/s; at 250 in flight 11,879 req/s (95.0%), 0.32 / 14.11 ms."
  echo
} >"$SECTION"

if [ "${BENCH_NO_WRITE:-0}" != 1 ]; then
  sh bench/section.sh issue4 "Issue 4: LLM I/O" <"$SECTION"
  echo "== wrote bench/RESULTS.md (section issue4)"
else
  cat "$SECTION"
fi
