#!/bin/sh
# pg.sh: a throwaway PostgreSQL for the tests.
#   test/pg.sh start DIR   initdb in DIR/data (once), start on a free port
#                          with its unix socket in DIR, wait until ready and
#                          print postgresql://postgres@127.0.0.1:PORT/postgres
#                          (and nothing else) on stdout. Starting again
#                          after a stop reuses DIR's data and port.
#   test/pg.sh stop DIR    stop it (fast shutdown); DIR stays for a restart.
#   test/pg.sh url DIR     print the URL again.
# Runs the server as the postgres user when started as root (initdb refuses
# root); DIR's parent may belong to root. fsync is off unless PG_FSYNC=on. Binaries: PG_BIN, else the newest
# /usr/lib/postgresql/*/bin, else PATH.
set -eu
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|url DIR" >&2; exit 2; }

if [ -z "${PG_BIN:-}" ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$PG_BIN" ] || PG_BIN=$(dirname "$(command -v initdb 2>/dev/null || echo /usr/bin/initdb)")
fi
[ -x "$PG_BIN/initdb" ] || { echo "pg.sh: no initdb in $PG_BIN (install postgresql)" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# as_pg CMD...: run as the server's user.
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  chmod 700 "$dir"
  # every parent must be traversable by postgres
  p=$(dirname "$dir")
  while [ "$p" != / ]; do chmod o+x "$p" 2>/dev/null || true; p=$(dirname "$p"); done
  if command -v runuser >/dev/null 2>&1; then
    as_pg() { runuser -u postgres -- "$@"; }
  else
    as_pg() { su postgres -s /bin/sh -c '"$0" "$@"' -- "$@"; }
  fi
else
  as_pg() { "$@"; }
fi

free_port() {
  # a port nobody listens on, from the ephemeral-free range 20000-29999
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    port=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 10000 ))
    if command -v ss >/dev/null 2>&1; then
      ss -ltn 2>/dev/null | grep -q ":$port " && continue
    fi
    echo "$port"; return 0
  done
  return 1
}

url() { echo "postgresql://postgres@127.0.0.1:$(cat "$dir/port")/postgres"; }

case "$cmd" in
start)
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    rm -rf "$dir/data"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
      --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
      as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 \
        --no-locale >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  [ -f "$dir/port" ] || free_port >"$dir/port"
  port=$(cat "$dir/port")
  fs=${PG_FSYNC:-off}   # PG_FSYNC=on for benchmarks that mean durable commits
  if as_pg "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    url; exit 0
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=$fs \
        -c synchronous_commit=$fs -c full_page_writes=$fs \
        -c max_connections=100 -c shared_buffers=128MB" start >/dev/null ||
    { tail -n 30 "$dir/server.log" >&2; exit 1; }
  i=0
  until "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port"; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "pg.sh: not ready" >&2; exit 1; }
    sleep 0.1
  done
  url
  ;;
stop)
  [ -d "$dir/data" ] || exit 0
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  ;;
url)
  url
  ;;
*)
  echo "usage: $0 start|stop|url DIR" >&2; exit 2
  ;;
esac
