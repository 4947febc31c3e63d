#!/usr/bin/env bash
# pgtmp.sh - a throwaway PostgreSQL server for the test suite.
#
#   pgtmp.sh start DIR   initdb in DIR, start on a free 127.0.0.1 port, create database crm_test,
#                        print its URL (postgresql://postgres@127.0.0.1:PORT/crm_test)
#   pgtmp.sh stop DIR    fast shutdown, then remove DIR
#
# PostgreSQL refuses to run as root: as root the server runs as the system user `postgres`
# (created if missing); otherwise as the current user. Binaries: $PG_BIN, or the newest
# /usr/lib/postgresql/*/bin.
set -euo pipefail

cmd=${1:?usage: pgtmp.sh start|stop DIR}
dir=${2:?usage: pgtmp.sh start|stop DIR}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
PG_USER=${PG_USER:-postgres}

if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  echo "pgtmp: no PostgreSQL binaries (install the postgresql package)" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir"
    chmod 700 "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
      -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=100" >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres crm_test
    echo "postgresql://postgres@127.0.0.1:$port/crm_test"
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    fi
    case "$dir" in /tmp/*) rm -rf "$dir" ;; esac
    ;;
  *)
    echo "usage: pgtmp.sh start|stop DIR" >&2
    exit 2
    ;;
esac
