#!/usr/bin/env python3
"""search_bench.py - search (issue 10) at scale: query latency, index size, write throughput.

    python bench/search_bench.py --sqlite /tmp/crmapi-bench/search-100000.db
    python bench/search_bench.py --pg postgresql://postgres@127.0.0.1:5432/crm_search --contacts 100000
    python bench/search_bench.py --sqlite /tmp/s.db --reuse          # skip the load (same file, same N)

What it does, in process (the store and the SQL the API runs, no HTTP):
  1. loads N contacts (default 100k) with bench/load_data.py (plus companies, deals, notes... as it
     makes them), then builds the search rows with `crmapi reindex` (timed: what `crmapi migrate`
     does for existing data);
  2. times page 1 (25 rows) with its exact total (Content-Range), repeated (the total kept: db.KeptCounts) and as a
     first request (the kept totals forgotten before each, as any commit does), of: q with two word prefixes
     ("jo smi"), q with one 3-letter prefix ("mar"), q with one letter ("a", ranked), contains with a 4-letter substring on last_name
     ("mith"), each ranked (no sort; contains: id order) and sorted by last_name; and, measured in the
     same run, the plain scan the same questions cost before: `LIKE '%…%'` over the text columns;
  3. sizes on disk: the search structures vs the tables (and their indexes) they serve;
  4. writes: single-contact creates and updates (each its own transaction, the API's path) and
     100-contact batch creates, with search upkeep and without it (the hook off: the before figure), the two
     alternating; rates by wall time and by this process's CPU time (`cpu_ratio`: on SQLite the whole write's).
Prints one table per part; --json FILE writes every figure. `--parts queries,sizes,writes` picks the parts;
`--meta FILE` is load_data.py's meta file of a data set loaded before (with --reuse; --sqlite then names the file
measured, e.g. a copy of that data set).
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import batches  # noqa: E402
from crmapi import sqlbuild  # noqa: E402
from crmapi.accounts import Principal  # noqa: E402
from crmapi.app import build_services  # noqa: E402
from crmapi.db import connect  # noqa: E402
from crmapi.query import parse_list  # noqa: E402
from crmapi.store import reindex_database  # noqa: E402

SEARCH_TABLES = ('search_texts', 'search_texts_trigrams', 'search_texts_words')  # the rows, then indexes
TEXT_COLUMNS = ('first_name', 'last_name', 'email', 'phone', 'title', 'city')  # what q read before


def log(message):
    print(message, file=sys.stderr, flush=True)


def load(args):
    """Load the data (unless --reuse), build the search rows; the big organization's id and the timings."""
    import load_data

    meta_path = args.meta or (args.sqlite + '.meta.json' if args.sqlite else '/tmp/search_bench_pg.meta.json')
    timings = {}
    if not args.reuse:
        target = ['--sqlite', args.sqlite] if args.sqlite else ['--pg', args.pg]
        t0 = time.perf_counter()
        load_data.main(['--contacts', str(args.contacts), *target, '--replace', '--meta', meta_path])
        timings['load_s'] = round(time.perf_counter() - t0, 1)
    with open(meta_path) as f:
        meta = json.load(f)
    engine = 'sqlite' if args.sqlite else 'postgresql'
    # NOTE: --sqlite and --pg name the data measured (a copy of a data set whose --meta names the original: with the
    # meta's URL, --pg was ignored, and a copy's runs measured the original)
    db = connect('sqlite:///' + os.path.abspath(args.sqlite) if args.sqlite else args.pg)
    if not args.reuse:
        t0 = time.perf_counter()
        reindex_database(db, log=log)
        timings['reindex_s'] = round(time.perf_counter() - t0, 1)
        if db.name == 'postgresql':
            with db.transaction(write=True) as tx:
                tx.execute('ANALYZE')
    return db, meta['targets'][engine]['org_id'], timings


def timed(run, repeat):
    """(p50, p99, CPU p50) in ms of `run()` over `repeat` runs after two warm-up runs (CPU: this process's; on
    SQLite the whole query's, the figure to compare on a busy machine)."""
    run(), run()
    samples, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        samples.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return round(statistics.median(samples), 2), round(p99, 2), round(statistics.median(cpu), 2)


def api_query(store, info, principal, params):
    lq = parse_list({k: json.dumps(v) for k, v in params.items()}, info)
    return lambda: store.list(info, principal, lq, 'exact')


def forget_counts(db):
    """Forget the exact totals kept (db.KeptCounts: a PostgreSQL process's, this thread's SQLite connection's), as
    any commit to the database makes them stale: the next request is a first one."""
    keepers = [getattr(db, 'kept', None)]
    if db.name == 'sqlite':
        conn = db.connection()
        keepers.append(getattr(conn, 'kept', None))
        conn.counts_version = None  # NOTE: a checkout before KeptCounts: a SQLite connection's counts, forgotten so
    for kept in keepers:
        if kept is not None:
            kept.forget()


def first_request(db, run):
    """`run` as the first request after a commit (no kept total)."""

    def first():
        forget_counts(db)
        return run()

    return first


def count_query(db, info, org_id, params):
    """The list's COUNT statement alone, run every time (a SQLite connection otherwise keeps the totals it counted
    until the next write: repeated, a list's total costs nothing; this is what the first request pays)."""
    sql, values = sqlbuild.build_count(
        db.dialect, info, org_id, parse_list({k: json.dumps(v) for k, v in params.items()}, info)
    )

    def run():
        with db.transaction() as tx:
            return tx.one(sql, values)[0]

    return run


def scan_query(db, org_id, where_sql, values, order):
    """The plain scan: LIKE '%…%' on the raw columns (what q and contains ran before), page 1 and COUNT(*)."""
    p = '?' if db.name == 'sqlite' else '%s'
    like = 'LIKE' if db.name == 'sqlite' else 'ILIKE'
    where = where_sql.replace('LIKE', like).replace('?', p)
    page = (
        f'SELECT id FROM contacts WHERE organization_id = {p} AND archived_at IS NULL AND {where} '
        f'ORDER BY {order} LIMIT 25'
    )
    count = f'SELECT COUNT(*) FROM contacts WHERE organization_id = {p} AND archived_at IS NULL AND {where}'

    def run():
        with db.transaction() as tx:
            tx.rows(page, [org_id, *values])
            return tx.one(count, [org_id, *values])[0]

    return run


def any_column(words):
    """Every word in some text column, as a substring (the old q, word by word)."""
    clauses = ['(' + ' OR '.join(f"{c} LIKE ? ESCAPE '\\'" for c in TEXT_COLUMNS) + ')' for _ in words]
    return ' AND '.join(clauses), [sqlbuild.like_pattern(w) for w in words for _ in TEXT_COLUMNS]


def queries(db, org_id, repeat, only=()):
    services = build_services(db)
    store, principal = services.store, Principal(org_id, None, True)
    info = services.catalog.resolve('contacts')
    cases = [
        ('q "jo smi" ranked', {'filter': {'q': 'jo smi'}}, any_column(['jo', 'smi']), 'id'),
        (
            'q "jo smi" by last_name',
            {'filter': {'q': 'jo smi'}, 'sort': ['last_name', 'ASC']},
            any_column(['jo', 'smi']),
            'last_name, id',
        ),
        ('q "mar" ranked', {'filter': {'q': 'mar'}}, any_column(['mar']), 'id'),
        (
            'q "mar" by last_name',
            {'filter': {'q': 'mar'}, 'sort': ['last_name', 'ASC']},
            any_column(['mar']),
            'last_name, id',
        ),
        ('q "a" ranked', {'filter': {'q': 'a'}}, any_column(['a']), 'id'),
        (
            'contains "mith" (id order)',
            {'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'mith'}]},
            ("last_name LIKE ? ESCAPE '\\'", ['%mith%']),
            'id',
        ),
        (
            'contains "mith" by last_name',
            {'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'mith'}], 'sort': ['last_name', 'ASC']},
            ("last_name LIKE ? ESCAPE '\\'", ['%mith%']),
            'last_name, id',
        ),
        (
            'contains "mith" by last_name desc',
            {'filters': [{'field': 'last_name', 'op': 'contains', 'value': 'mith'}], 'sort': ['last_name', 'DESC']},
            ("last_name LIKE ? ESCAPE '\\'", ['%mith%']),
            'last_name DESC, id DESC',
        ),
    ]
    cases = [c for c in cases if not only or any(o in c[0] for o in only)]
    results = []
    for label, params, (where, values), order in cases:
        run = api_query(store, info, principal, params)
        total = run()[1]
        indexed = timed(run, repeat)
        first = timed(first_request(db, run), max(5, repeat // 2))
        scan = scan_query(db, org_id, where, values, order)
        scanned = timed(scan, max(5, repeat // 5))
        counted = timed(count_query(db, info, org_id, params), max(5, repeat // 5))
        results.append(
            {
                'query': label,
                'total': total,
                'p50_ms': indexed[0],
                'p99_ms': indexed[1],
                'cpu_p50_ms': indexed[2],
                'first_p50_ms': first[0],
                'first_p99_ms': first[1],
                'first_cpu_p50_ms': first[2],
                'count_p50_ms': counted[0],
                'scan_total': scan(),
                'scan_p50_ms': scanned[0],
                'scan_p99_ms': scanned[1],
            }
        )
        log(f'{label}: {indexed} ms, first {first} ms (scan {scanned} ms, count alone {counted} ms), {total} matches')
    return results


def sizes(db):
    """Bytes on disk: the search rows and their indexes, and the record tables (with their own indexes)."""
    with db.transaction() as tx:
        if db.name == 'sqlite':
            owner = dict(tx.rows("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')"))
            per = {}
            for name, size in tx.rows('SELECT name, SUM(pgsize) FROM dbstat GROUP BY name'):
                table = owner.get(name, name)
                group = 'search_texts_trigrams' if table.startswith('search_texts_trigrams') else table
                per[group] = per.get(group, 0) + size
        else:
            per = dict(
                tx.rows(
                    'SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c '
                    "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace"
                )
            )
            for index in ('search_texts_trigrams', 'search_texts_words'):
                per[index] = tx.one('SELECT pg_relation_size(%s::regclass)', (index,))[0]
            per['search_texts'] -= per['search_texts_trigrams'] + per['search_texts_words']
    search = {t: per.get(t, 0) for t in SEARCH_TABLES}
    records = {
        t: per.get(t, 0) for t in ('contacts', 'companies', 'deals', 'tasks', 'contact_notes', 'crm_users', 'tags')
    }
    mb = 2**20
    return {
        'search': search,
        'records': records,
        'search_mb': round(sum(search.values()) / mb, 1),
        'records_mb': round(sum(records.values()) / mb, 1),
        'contacts_mb': round(records['contacts'] / mb, 1),
    }


def writes(db, org_id, n, rounds=5):
    """Contacts a second: single creates, single updates (a searchable field), 100-contact batches; with
    search upkeep and with the hook off (`before`). The two alternate, `rounds` times, so that a machine
    busy with other work weighs on both alike."""
    services = build_services(db)
    store, principal = services.store, Principal(org_id, None, True)
    info = services.catalog.resolve('contacts')
    companies = services.catalog.resolve('companies')
    company = store.list(companies, principal, parse_list({'range': '[0,0]'}, companies))[0][0]['id']

    def body(i, tag):
        return {
            'first_name': f'Bench{tag}{i}',
            'last_name': 'Writer',
            'email': f'bench.{tag}{i}@example.com',
            'phone': '+1 555 0100',
            'title': 'Buyer',
            'city': 'Lisbon',
            'company_id': company,
        }

    def measure(tag, count):
        """{kind: (wall seconds, CPU seconds)} of `count` writes of each kind."""
        spent = {}

        @contextlib.contextmanager
        def timing(kind):
            t0, c0 = time.perf_counter(), time.process_time()
            yield
            spent[kind] = (time.perf_counter() - t0, time.process_time() - c0)

        with timing('creates_per_s'):
            made = [store.create(info, principal, body(i, tag)) for i in range(count)]
        with timing('updates_per_s'):
            for record in made:
                store.update(info, principal, record['id'], {'last_name': 'Rewritten', 'city': 'Porto'})
        with timing('batch_creates_per_s'):
            for start in range(0, count, 100):
                store.create_many(info, principal, [body(i, tag + 'b') for i in range(start, start + 100)])
        return spent

    spent = {'with_search': {}, 'before': {}}
    per_round = max(100, n // rounds)
    for r in range(rounds):
        # NOTE: which mode goes first alternates, so that neither always writes into the other's fresh segments
        for mode in ('with_search', 'before') if r % 2 == 0 else ('before', 'with_search'):
            batches.search_upkeep(mode != 'before')
            try:
                for key, (wall, cpu) in measure(f'{mode[0]}{r}x', per_round).items():
                    total = spent[mode].get(key, (0, 0))
                    spent[mode][key] = (total[0] + wall, total[1] + cpu)
            finally:
                batches.search_upkeep(True)
    done = per_round * rounds
    out = {mode: {k: round(done / v[0]) for k, v in times.items()} for mode, times in spent.items()}
    out['ratio'] = {k: round(out['with_search'][k] / out['before'][k], 2) for k in out['before']}
    # NOTE: CPU time of this process: on SQLite the whole write's (the comparable figure on a busy machine); on
    # PostgreSQL the client's share only
    cpu = {mode: {k: round(done / v[1]) for k, v in times.items()} for mode, times in spent.items()}
    out['cpu_per_s'] = cpu
    out['cpu_ratio'] = {k: round(cpu['with_search'][k] / cpu['before'][k], 2) for k in cpu['before']}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--contacts', type=int, default=100_000)
    p.add_argument('--sqlite', metavar='PATH')
    p.add_argument('--pg', metavar='URL')
    p.add_argument('--reuse', action='store_true', help='the data is loaded already (same file or URL)')
    p.add_argument('--repeat', type=int, default=50, help='timed runs of each query')
    p.add_argument('--writes', type=int, default=500, help='contacts each write measurement makes')
    p.add_argument('--json', metavar='FILE')
    p.add_argument('--meta', metavar='FILE', help="load_data.py's --meta file (default: beside the data)")
    p.add_argument('--parts', default='queries,sizes,writes', help='which parts to run (comma-separated)')
    p.add_argument(
        '--queries', metavar='TEXT,…', help='only the queries whose label holds one of these (comma-separated)'
    )
    a = p.parse_args(argv)
    if bool(a.sqlite) == bool(a.pg):
        p.error('give --sqlite PATH or --pg URL')
    db, org_id, timings = load(a)
    out = {'engine': db.name, 'contacts': a.contacts, 'timings': timings}
    parts = a.parts.split(',')
    if 'queries' in parts:
        out['queries'] = queries(db, org_id, a.repeat, a.queries.split(',') if a.queries else ())
    if 'sizes' in parts:
        out['sizes'] = sizes(db)
    if 'writes' in parts:
        out['writes'] = writes(db, org_id, a.writes)
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
