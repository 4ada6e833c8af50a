#!/bin/sh
# section.sh KEY TITLE: replaces the section KEY of bench/RESULTS.md with
# the text read from stdin (a "## TITLE" heading is put on top), or appends
# it when the file has no such section yet. Sections are delimited by
# <!-- KEY:begin --> and <!-- KEY:end --> lines, so each bench script
# (run.sh, llm.sh, store.sh, policy.sh) rewrites only its own.
set -eu
key=$1; title=$2
dir=$(cd "$(dirname "$0")" && pwd)
out=$dir/RESULTS.md
body=$(mktemp); new=$(mktemp)
trap 'rm -f "$body" "$new"' EXIT
{ echo "<!-- $key:begin -->"; echo "## $title"; echo; cat; echo "<!-- $key:end -->"; } > "$body"
if [ ! -f "$out" ]; then
  printf '# Benchmark results\n\nWritten by `make bench` (bench/run.sh and the scripts it calls); one\nsection per issue, each rewritten only by its own script.\n\n' > "$out"
fi
if grep -q "^<!-- $key:begin -->\$" "$out"; then
  awk -v key="$key" -v body="$body" '
    $0 == "<!-- " key ":begin -->" { while ((getline l < body) > 0) print l; skip = 1; next }
    $0 == "<!-- " key ":end -->" { skip = 0; next }
    !skip { print }' "$out" > "$new"
else
  { cat "$out"; echo; cat "$body"; } > "$new"
fi
cat "$new" > "$out"
