#!/usr/bin/env bash
# bench/pg.sh - the benchmark's own throwaway PostgreSQL on 127.0.0.1 (never the tests' server).
#
#   bench/pg.sh start   [PORT] [DATADIR]   initdb if needed, start, print the server URL
#   bench/pg.sh stop    [PORT] [DATADIR]   fast shutdown (the data stays for the next run)
#   bench/pg.sh status  [PORT] [DATADIR]
#   bench/pg.sh url     [PORT]             print postgresql://postgres@127.0.0.1:PORT/postgres
#   bench/pg.sh destroy [PORT] [DATADIR]   stop, then rm -rf DATADIR (only under /tmp)
#
# Defaults: PORT=${BENCH_PG_PORT:-55439}, DATADIR=${BENCH_DIR:-/tmp/crmapi-bench}/pg-$PORT.
# Trust auth on loopback only, user postgres, locale C.UTF-8 (byte order, as SQLite sorts).
# Settings for a 2-core box: shared_buffers=512MB, effective_cache_size=4GB, work_mem=16MB,
# max_connections=200; fsync stays on (writes are measured). Extra settings: PG_OPTS="-c k=v".
# As root the server runs as the system user $PG_USER (default postgres; created if missing).
# Binaries: $PG_BIN, or the newest /usr/lib/postgresql/*/bin. The log is DATADIR/server.log.
set -euo pipefail

cmd=${1:-}
port=${2:-${BENCH_PG_PORT:-55439}}
dir=${3:-${BENCH_DIR:-/tmp/crmapi-bench}/pg-$port}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
PG_USER=${PG_USER:-postgres}
url="postgresql://postgres@127.0.0.1:$port/postgres"

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

need_bin() {
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    echo "bench/pg.sh: no PostgreSQL binaries (apt-get install postgresql)" >&2
    exit 1
  fi
}

case "$cmd" in
  start)
    need_bin
    if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
    fi
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir"
      chmod 700 "$dir"
      as_pg "$PG_BIN/initdb" -D "$dir" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log" >&2; exit 1; }
    fi
    if as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
      echo "bench/pg.sh: already running" >&2
    else
      # shellcheck disable=SC2086
      as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start -o \
        "-h 127.0.0.1 -p $port -k $dir -c max_connections=200 -c shared_buffers=512MB \
         -c effective_cache_size=4GB -c work_mem=16MB -c maintenance_work_mem=256MB ${PG_OPTS:-}" >/dev/null \
        || { tail -n 20 "$dir/server.log" >&2; exit 1; }
    fi
    echo "$url"
    ;;
  stop)
    need_bin
    if [ -f "$dir/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
    fi
    ;;
  status)
    need_bin
    as_pg "$PG_BIN/pg_ctl" -D "$dir" status
    ;;
  url)
    echo "$url"
    ;;
  destroy)
    need_bin
    if [ -f "$dir/postmaster.pid" ]; then as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true; fi
    case "$dir" in /tmp/*) rm -rf "$dir" "$dir.initdb.log" ;; *) echo "refusing to rm $dir (not under /tmp)" >&2; exit 1 ;; esac
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
