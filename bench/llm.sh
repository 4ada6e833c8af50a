#!/bin/sh
# llm.sh: the LLM fan-out benchmark (issue 4, section 8). Builds
# build/llm_bench against build/liborch.a, starts the mock LLM server in its
# own process (llm_bench serve), then runs, one after the other against that
# same mock: orchestrate's client (llm_bench run) and Node.js's built-in
# fetch (llm_fetch.mjs). Prints both JSON lines and a table; with --md FILE
# appends the table to FILE (bench/RESULTS.md).
# Env: N (10000), C (1000), LATENCY (20), ROUNDS (3: best of).
set -eu
cd "$(dirname "$0")/.."
N=${N:-10000}; C=${C:-1000}; LATENCY=${LATENCY:-20}; ROUNDS=${ROUNDS:-3}
MD=""
[ "${1:-}" = "--md" ] && MD=$2
BUILD=${BUILD:-build}
[ -f "$BUILD/liborch.a" ] || make -s all
PKGS="lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto"
cc -std=c11 -D_GNU_SOURCE -O2 -g -pthread -Iruntime $(pkg-config --cflags $PKGS) \
  -o "$BUILD/llm_bench" bench/llm_bench.c "$BUILD/liborch.a" \
  $(pkg-config --libs $PKGS) -lm
ulimit -n 20000 2>/dev/null || true

OUT=$(mktemp -d)
"$BUILD/llm_bench" serve 0 >"$OUT/port" &
MOCK=$!
trap 'kill $MOCK 2>/dev/null; wait $MOCK 2>/dev/null; rm -rf "$OUT"' EXIT INT TERM
i=0
while [ ! -s "$OUT/port" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
PORT=$(head -n 1 "$OUT/port")
BASE="http://127.0.0.1:$PORT"

# warm-up (connections, page cache), then ROUNDS of each, alternating
"$BUILD/llm_bench" run "$BASE" 2000 "$C" "$LATENCY" >/dev/null || true
r=0
while [ $r -lt "$ROUNDS" ]; do
  "$BUILD/llm_bench" run "$BASE" "$N" "$C" "$LATENCY" >>"$OUT/c.jsonl" || true
  node bench/llm_fetch.mjs "$BASE" "$N" "$C" "$LATENCY" >>"$OUT/node.jsonl" || true
  r=$((r + 1))
done

# best round of each by throughput, then a table
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
local rows = {}
for i = 1, #arg do
  local t = best(arg[i])
  if t then rows[#rows + 1] = t; io.stderr:write(cjson.encode(t), "\n") end
end
print("| client | requests | concurrency | throughput (req/s) | of ideal | added p50 (ms) | added p99 (ms) | peak RSS / in flight (KiB) | CPU / request (us) | failed |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for _, t in ipairs(rows) do
  print(string.format("| %s | %d | %d | %d | %.1f%% | %.2f | %.2f | %.1f | %.1f | %d |",
    t.client, t.requests, t.concurrency, t.throughput, t.ratio * 100,
    t.added_p50_ms, t.added_p99_ms, t.kib_per_inflight, t.cpu_us_per_req or 0, t.failed))
end
LUA
TABLE=$(lua5.4 "$OUT/table.lua" "$OUT/c.jsonl" "$OUT/node.jsonl")
echo "$TABLE"
if [ -n "$MD" ]; then
  {
    echo
    echo "## LLM fan-out ($(date -u +%Y-%m-%d), $(nproc) cores, mock latency ${LATENCY} ms, ideal $((C * 1000 / LATENCY)) req/s, best of $ROUNDS)"
    echo
    echo "$TABLE"
  } >>"$MD"
fi
