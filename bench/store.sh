#!/bin/sh
# store.sh: the store benchmark. Builds bench/store_bench against
# build/liborch.a, starts a throwaway PostgreSQL with durable commits
# (PG_FSYNC=on, test/pg.sh) unless ORCH_BENCH_PG names one, runs
# store_bench URL [N] and prints its markdown table.
set -eu
cd "$(dirname "$0")/.."
N=${1:-100000}
BUILD=${BUILD:-build}
make -s "$BUILD/liborch.a"
PKGS="lua5.4 libuv libcurl libpq sqlite3 jansson libmicrohttpd libcrypto"
cc -std=c11 -D_GNU_SOURCE -O2 -pthread -Iruntime $(pkg-config --cflags $PKGS) \
  -o "$BUILD/store_bench" bench/store_bench.c "$BUILD/liborch.a" \
  $(pkg-config --libs $PKGS) -lm
if [ -n "${ORCH_BENCH_PG:-}" ]; then
  URL=$ORCH_BENCH_PG
else
  DIR="$(pwd)/$BUILD/pgbench"
  URL=$(PG_FSYNC=${PG_FSYNC:-on} test/pg.sh start "$DIR")
  trap 'test/pg.sh stop "$DIR" >/dev/null 2>&1' EXIT INT TERM
fi
echo "PostgreSQL: $(psql -X -A -t -d "$URL" -c 'show server_version') (fsync $(psql -X -A -t -d "$URL" -c 'show fsync'), synchronous_commit $(psql -X -A -t -d "$URL" -c 'show synchronous_commit')), $(nproc) cores"
"$BUILD/store_bench" "$URL" "$N" 2>"$BUILD/store_bench.log"
