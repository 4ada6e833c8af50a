#!/bin/sh
# Installs every Debian 12 package orchestrate uses. Idempotent; prints
# nothing when everything is already there.
set -e
PKGS="build-essential clang pkg-config lua5.4 liblua5.4-dev lua-cjson lua-busted
libuv1-dev libcurl4-openssl-dev libpq-dev libsqlite3-dev sqlite3 libjansson-dev
libmicrohttpd-dev libssl-dev postgresql postgresql-client curl
nodejs procps bsdutils"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "make deps: installing$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
