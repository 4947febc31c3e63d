#!/usr/bin/env bash
# pgbouncer.sh - PgBouncer for the scale-out tests, from deploy/pgbouncer.ini (and by hand).
#
#   pgbouncer.sh start DIR ADDR PORT NAME=CONNSTR ...   deploy/pgbouncer.ini with these [databases] entries
#                                                       (e.g. crm='host=10.77.0.1 port=5432 dbname=crm'),
#                                                       listening on ADDR:PORT, trust auth for `postgres`,
#                                                       logs and pid in DIR; waits until it listens
#   pgbouncer.sh stop DIR [SIGNAL]                      TERM (immediate shutdown, the default), INT (safe), KILL
#   pgbouncer.sh restart DIR                            stop, then start with the same configuration
#
# As root PgBouncer runs as `postgres` (PG_USER): it refuses to run as root. Run it inside a network
# namespace (`ip netns exec NS scripts/pgbouncer.sh ...`) for an app host of tests/test_cluster.py.
set -euo pipefail

cmd=${1:?usage: pgbouncer.sh start DIR ADDR PORT NAME=CONNSTR ... | stop DIR | restart DIR}
dir=${2:?DIR}
PG_USER=${PG_USER:-postgres}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
here=$(cd "$(dirname "$0")/.." && pwd)

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

launch() {
  rm -f "$dir/pgbouncer.pid"
  as_pg "$PGBOUNCER" -d "$dir/pgbouncer.ini" >>"$dir/pgbouncer.out" 2>&1 || { cat "$dir/pgbouncer.log" >&2; exit 1; }
  read -r addr port <"$dir/address"
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null; then exit 0; fi
    sleep 0.05
  done
  echo "pgbouncer: not listening on $addr:$port" >&2
  cat "$dir/pgbouncer.log" >&2
  exit 1
}

stop() {
  if [ -f "$dir/pgbouncer.pid" ]; then
    pid=$(cat "$dir/pgbouncer.pid")
    kill "-${1:-TERM}" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/pgbouncer.pid"
  fi
}

case "$cmd" in
  start)
    addr=${3:?ADDR}; port=${4:?PORT}; shift 4
    if [ ! -x "$PGBOUNCER" ]; then
      echo "pgbouncer is not installed: run make system-packages (apt-get install pgbouncer)" >&2
      exit 1
    fi
    mkdir -p "$dir"
    databases=$(for spec in "$@"; do printf '%s = %s\\n' "${spec%%=*}" "${spec#*=}"; done)
    sed -e "/^\[databases\]/,/^\[pgbouncer\]/{/^[a-z0-9_]* *=/d}" \
        -e "s|^\[databases\]|[databases]\n$databases|" \
        -e "s|^listen_addr = .*|listen_addr = $addr|" \
        -e "s|^listen_port = .*|listen_port = $port|" \
        -e "s|^auth_type = .*|auth_type = trust|" \
        -e "s|^auth_file = .*|auth_file = $dir/userlist.txt|" \
        -e "s|^logfile = .*|logfile = $dir/pgbouncer.log|" \
        -e "s|^pidfile = .*|pidfile = $dir/pgbouncer.pid|" \
        "$here/deploy/pgbouncer.ini" >"$dir/pgbouncer.ini"
    echo '"postgres" ""' >"$dir/userlist.txt"
    echo "$addr $port" >"$dir/address"
    [ "$(id -u)" = 0 ] && chown -R "$PG_USER" "$dir"
    launch
    ;;
  stop)
    stop "${3:-TERM}"
    ;;
  restart)
    stop TERM
    launch
    ;;
  *)
    echo "usage: pgbouncer.sh start DIR ADDR PORT NAME=CONNSTR ... | stop DIR | restart DIR" >&2
    exit 2
    ;;
esac
