#!/usr/bin/env bash
# bench/bench.sh - the `make bench` entry point: sets up everything on a fresh clone, then runs
# bench/run.py (crmapi vs its floors, SQLite and PostgreSQL, wrk on loopback).
#
#   bash bench/bench.sh                               # 100k contacts, both databases, 10 s per cell
#   CONTACTS=1000000 bash bench/bench.sh              # the big run (loads ~1M rows per database once)
#   DB=sqlite DURATION=5s WORKLOADS=list,get bash bench/bench.sh
#
# Env: CONTACTS (100000), DURATION (10s), WARMUP (2, seconds), DB (both|sqlite|postgresql),
# WORKLOADS (all), BENCH_DIR (/tmp/crmapi-bench: data sets, PostgreSQL cluster, server logs),
# VENV (.venv), PYTHON (python3), RUN_ARGS (extra bench/run.py flags).
# Installs when missing: the venv + `pip install -e .`; Debian packages wrk and (unless
# DB=sqlite) postgresql, with apt-get (sudo when not root). Data sets are kept under BENCH_DIR
# and reused by later runs of the same size; the PostgreSQL server (bench/pg.sh, port 55439)
# is started for the run and stopped after it.
# Results: bench/results/<date>.md (markdown, appended) and bench/results/<date>.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

CONTACTS=${CONTACTS:-100000}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2}
DB=${DB:-both}
WORKLOADS=${WORKLOADS:-list,filter,contains,get,deep,deep_cursor,create,update,mixed}
BENCH_DIR=${BENCH_DIR:-/tmp/crmapi-bench}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
fi
"$VENV/bin/python" -c 'import crmapi, falcon, gunicorn, psycopg, psycopg_pool, pypika, orjson' 2>/dev/null \
  || "$VENV/bin/pip" install --quiet -e .

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "$DB" != sqlite ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]} (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

mkdir -p bench/results "$BENCH_DIR"
out="bench/results/$(date +%F).md"
# shellcheck disable=SC2086
"$VENV/bin/python" bench/run.py --contacts "$CONTACTS" --duration "$DURATION" --warmup "$WARMUP" --db "$DB" \
  --workloads "$WORKLOADS" --data-dir "$BENCH_DIR" --out-md "$out" --out-jsonl "${out%.md}.jsonl" ${RUN_ARGS:-}
echo "bench: results appended to $out" >&2
