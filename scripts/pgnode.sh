#!/usr/bin/env bash
# pgnode.sh - PostgreSQL primaries and streaming replicas for the scale-out tests (and by hand).
#
#   pgnode.sh primary DIR ADDR PORT          initdb in DIR, start on ADDR:PORT (trust auth, replication
#                                            allowed from 127.0.0.0/8 and 10.0.0.0/8), create database
#                                            crm; print its URL
#   pgnode.sh replica DIR ADDR PORT FROM_URL a streaming replica of the server at FROM_URL (pg_basebackup
#                                            -R), started on ADDR:PORT; print the URL of its database
#                                            (FROM_URL's database name)
#   pgnode.sh delay DIR DURATION             a replica applies WAL DURATION late (recovery_min_apply_delay,
#                                            e.g. 2s; 0 turns it off), reloaded at once
#   pgnode.sh promote DIR                    the replica becomes a primary (pg_ctl promote, waits)
#   pgnode.sh stop DIR [MODE]                shut down (fast by default; immediate = a crash); DIR is kept
#   pgnode.sh start DIR                      start again a server stopped with `stop`
#   pgnode.sh remove DIR                     stop (immediate) and delete DIR (under /tmp only)
#
# As root the servers run as the system user `postgres` (PG_USER), as scripts/pgtmp.sh does; binaries
# from $PG_BIN or the newest /usr/lib/postgresql/*/bin. Run it inside a network namespace
# (`ip netns exec NS scripts/pgnode.sh ...`) to give a server an address of that namespace.
set -euo pipefail

cmd=${1:?usage: pgnode.sh primary|replica|delay|promote|stop|start|remove DIR ...}
dir=${2:?DIR}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
PG_USER=${PG_USER:-postgres}

if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  echo "pgnode: no PostgreSQL binaries (install the postgresql package)" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

prepare() {
  if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir"
  chmod 700 "$dir"
}

start() {  # ADDR PORT
  echo "$1 $2" >"$dir/address"
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-h $1 -p $2 -k $dir -c fsync=off -c max_connections=100 -c wal_keep_size=256MB" >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
}

case "$cmd" in
  primary)
    addr=${3:?ADDR}; port=${4:?PORT}
    prepare
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    for net in 127.0.0.0/8 10.0.0.0/8; do
      printf 'host all all %s trust\nhost replication all %s trust\n' "$net" "$net" >>"$dir/data/pg_hba.conf"
    done
    start "$addr" "$port"
    as_pg "$PG_BIN/createdb" -h "$addr" -p "$port" -U postgres crm
    echo "postgresql://postgres@$addr:$port/crm"
    ;;
  replica)
    addr=${3:?ADDR}; port=${4:?PORT}; from=${5:?FROM_URL}
    prepare
    as_pg "$PG_BIN/pg_basebackup" -d "$from" -D "$dir/data" -R -X stream --no-sync -c fast >"$dir/basebackup.log" 2>&1 \
      || { cat "$dir/basebackup.log" >&2; exit 1; }
    start "$addr" "$port"
    echo "postgresql://postgres@$addr:$port/${from##*/}"
    ;;
  delay)
    duration=${3:?DURATION}
    echo "recovery_min_apply_delay = '$duration'" >>"$dir/data/postgresql.auto.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" reload >/dev/null
    ;;
  promote)
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -w -t 30 promote >/dev/null
    ;;
  stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w -t 30 stop >/dev/null
    fi
    ;;
  start)
    read -r addr port <"$dir/address"
    start "$addr" "$port"
    ;;
  remove)
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    case "$dir" in /tmp/*) rm -rf "$dir" ;; esac
    ;;
  *)
    echo "usage: pgnode.sh primary|replica|delay|promote|stop|start|remove DIR ..." >&2
    exit 2
    ;;
esac
