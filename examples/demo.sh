#!/bin/sh
# make demo: the main job end to end on this machine, with no network: a
# plan runs in parallel with live progress, recorded in an SQLite store.
set -e
cd "$(dirname "$0")/.."
BIN=./build/orchestrate
DB="sqlite:build/demo.db"
echo "== 1. The plan: levels and the critical path"
$BIN plan examples/pipeline.json
echo
echo "== 2. Run it (steps start the moment their own dependencies finish)"
$BIN run --db "$DB" examples/pipeline.json
echo
echo "== 3. A GAP plan, as a model writes it (dry run: model calls simulated)"
$BIN plan examples/plan.gap
$BIN run --db "$DB" --dry-run examples/plan.gap
echo
echo "== 4. The sessions on record"
$BIN status --db "$DB"
