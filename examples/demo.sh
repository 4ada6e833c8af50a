#!/bin/sh
# make demo: the main job end to end. A request is planned by a model as a
# dependency graph, the independent tasks run at once, and a synthesis
# writes the answer; every step is recorded in an SQLite store.
#
# With no model configured it starts the project's mock LLM on a free
# loopback port (each call takes 400 ms, like a small model); with
# OPENAI_BASE_URL or ANTHROPIC_API_KEY set it uses that model instead.
set -e
cd "$(dirname "$0")/.."
BIN=./build/orchestrate
DB="sqlite:build/demo.db"
REQUEST=${REQUEST:-"Compare the open security advisories with the modules changed in this release, check the test coverage of each changed module, and write a short release risk summary for the team"}
MOCK_PID=""
stop_mock() {
  if [ -n "$MOCK_PID" ]; then kill "$MOCK_PID" 2>/dev/null; wait "$MOCK_PID" 2>/dev/null || true; fi
  MOCK_PID=""
}
trap stop_mock EXIT
trap 'stop_mock; exit 130' INT TERM

if [ -z "${OPENAI_BASE_URL:-}" ] && [ -z "${ANTHROPIC_API_KEY:-}" ]; then
  LOG=build/demo-mock.log
  : > "$LOG"
  $BIN mock-llm --port 0 > "$LOG" 2>&1 &
  MOCK_PID=$!
  PORT=""
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    PORT=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$LOG")
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  [ -n "$PORT" ] || { cat "$LOG"; echo "demo: the mock LLM did not start" >&2; exit 1; }
  export OPENAI_BASE_URL="http://127.0.0.1:$PORT/v1"
  export OPENAI_MODEL="demo-model+fault=latency=400"
  echo "== mock LLM on 127.0.0.1:$PORT (every call takes 400 ms)"
else
  echo "== using the model at ${OPENAI_BASE_URL:-Anthropic}"
fi
echo
echo "== 1. orchestrate ask: plan -> parallel tasks -> answer"
echo "request: $REQUEST"
echo
$BIN ask --db "$DB" --plan "$REQUEST"
echo
echo "== 2. A plan written by hand: shell, sleep and Lua steps"
$BIN run --db "$DB" examples/pipeline.json
echo
echo "== 3. The sessions on record"
$BIN status --db "$DB"
