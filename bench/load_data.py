#!/usr/bin/env python3
"""load_data.py - deterministic benchmark data in crmapi's own schema (SQLite and/or PostgreSQL).

    python bench/load_data.py --contacts 100000 --sqlite /tmp/crmapi-bench/crm-100000.db
    python bench/load_data.py --contacts 1000000 --pg postgresql://postgres@127.0.0.1:55439/crm_1000000
    python bench/load_data.py --contacts 1000 --sqlite /tmp/x.db --pg postgresql://... --meta /tmp/x.json

What it writes (the same rows, byte for byte, for the same --contacts and --seed):
  - 2 organizations: "Big Bench Corp" holds N contacts (the scale), "Small Bench Ltd" N/20;
  - per organization of n contacts: n/10 companies, n/20 deals, n/5 tasks, n/5 contact_notes,
    20 tags, 10 CRM users; contacts: ~1 % archived, 90 % linked to a company, 0-2 tags;
  - realistic values: weighted cities (London ~6 %), statuses, Zipf-like last names (few hundred
    names, so many duplicates), deal amounts, dates spread over six years;
  - ids in crmapi's format (prefix + 26 Crockford base32 characters: 48 bits of the record's
    created_at in ms, then 80 bits from the seeded generator), so they sort by creation time
    like the ids the API makes.

How: `crmapi init-db` (run as `python -m crmapi`) creates the schema; its secondary indexes
(read back from sqlite_master / pg_indexes, so schema changes need no edit here) are dropped,
rows go in with executemany (SQLite, one transaction, synchronous=OFF)
or COPY (PostgreSQL, foreign-key triggers skipped with session_replication_role=replica when
the role may), then the indexes are rebuilt and the tables ANALYZEd. The data is consistent by
construction (every reference stays inside its organization), so FK checks can be skipped.
Finally an API token for the big organization is made through crmapi.accounts.Accounts and
printed on stdout (and stored in --meta FILE with the organization ids and the timings).

--replace starts from nothing (SQLite: deletes the file; PostgreSQL: drops schema public).
Without it an existing crmapi schema that already holds organizations is refused.
NOTE: rows are written directly, not through the API, so derived data the schema keeps (the
per-organization `row_counts` of migration 0003, contacts' `children_seen` of 0025) is recomputed here, in
`derived()`; a new kind of derived data needs a line there.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import datetime as dt
import json
import os
import random
import re
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repo root, for a run without `pip install -e .`

import subprocess  # noqa: E402

from crmapi.accounts import Accounts  # noqa: E402
from crmapi.db import connect  # noqa: E402

LOADER_VERSION = 1
_CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz'
_B32_TO_CROCKFORD = bytes.maketrans(b'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567', _CROCKFORD.encode())
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
SPAN_MS = 6 * 365 * 86400 * 1000
END_MS = SPAN_MS + 30 * 86400 * 1000

FIRST = (
    'Ada Alan Alice Amelia Ana Andrea Anna Arjun Ben Carla Carlos Charlotte Chen Chloe Clara '
    'Daniel David Diego Elena Emma Eric Eva Fatima Felix Grace Hannah Hugo Ines Isabel Ivan '
    'Jack James Jan Jana Javier John Jonas Jose Julia Karen Kenji Laura Lea Leila Leo Li Lina '
    'Lucas Lucia Luis Maria Mark Marta Mateo Mei Mia Michael Mohamed Nadia Noah Nora Olga '
    'Olivia Omar Oscar Paul Pedro Peter Priya Rachel Raj Rosa Sam Sara Sofia Sophie Tom Tomas '
    'Valeria Victor Wei Yuki Yusuf Zoe'
).split()
LAST = (
    'Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez '
    'Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris '
    'Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill '
    'Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt '
    'Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Dubois Durand Lefebvre Moreau '
    'Laurent Simon Michel Leroy Roux David Bertrand Morel Fournier Girard Bonnet Rossi Russo '
    'Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti Costa Silva '
    'Santos Oliveira Souza Pereira Ferreira Alves Lima Carvalho Gomes Ribeiro Rocha Almeida '
    'Kowalski Nowak Wisniewski Novak Svoboda Dvorak Horvat Kovacs Nagy Szabo Toth Papadopoulos '
    'Jensen Nielsen Hansen Pedersen Andersen Larsen Johansson Karlsson Nilsson Eriksson Olsen '
    'Virtanen Korhonen Murphy Kelly Byrne Walsh Ryan OBrien Sato Suzuki Takahashi Tanaka '
    'Watanabe Ito Yamamoto Nakamura Kobayashi Kato Wang Zhang Liu Yang Huang Zhao Wu Zhou Xu '
    'Sun Ma Zhu Hu Guo Kim Park Choi Jung Kang Cho Yoon Jang Patel Shah Singh Kumar Sharma '
    'Gupta Mehta Iyer Reddy Rao Khan Ali Hussain Ahmed Hassan Ibrahim Mahmoud Cohen Levi '
    'Mizrahi Friedman Ivanov Smirnov Kuznetsov Popov Sokolov Lebedev Kozlov Novikov Morozov '
    'Petrov Volkov Lovelace Hopper Turing Dijkstra Liskov Knuth Hamilton Torvalds Ritchie '
    'Kernighan Stroustrup Berners-Lee OConnor De-la-Cruz Van-der-Berg'
).split()
CITIES = [
    ('London', 'GB', 60),
    ('New York', 'US', 55),
    ('Paris', 'FR', 45),
    ('Berlin', 'DE', 40),
    ('San Francisco', 'US', 35),
    ('Toronto', 'CA', 30),
    ('Sydney', 'AU', 28),
    ('Madrid', 'ES', 26),
    ('Amsterdam', 'NL', 25),
    ('Tokyo', 'JP', 25),
    ('Chicago', 'US', 24),
    ('Boston', 'US', 20),
    ('Seattle', 'US', 20),
    ('Dublin', 'IE', 18),
    ('Munich', 'DE', 16),
    ('Barcelona', 'ES', 16),
    ('Milan', 'IT', 15),
    ('Stockholm', 'SE', 14),
    ('Copenhagen', 'DK', 12),
    ('Zurich', 'CH', 12),
    ('Vienna', 'AT', 12),
    ('Lisbon', 'PT', 12),
    ('Singapore', 'SG', 12),
    ('Bangalore', 'IN', 12),
    ('Sao Paulo', 'BR', 12),
    ('Mexico City', 'MX', 11),
    ('Manchester', 'GB', 10),
    ('Lyon', 'FR', 8),
    ('Hamburg', 'DE', 8),
    ('Brussels', 'BE', 8),
    ('Oslo', 'NO', 7),
    ('Helsinki', 'FI', 7),
    ('Warsaw', 'PL', 7),
    ('Prague', 'CZ', 6),
    ('Montreal', 'CA', 6),
    ('Melbourne', 'AU', 6),
    ('Denver', 'US', 6),
    ('Miami', 'US', 6),
    ('Tel Aviv', 'IL', 5),
    ('Dubai', 'AE', 5),
    ('Cape Town', 'ZA', 4),
    ('Nairobi', 'KE', 3),
    ('Reykjavik', 'IS', 1),
    ('Valletta', 'MT', 1),
]
CONTACT_STATUSES = [('cold', 40), ('warm', 30), ('hot', 15), ('in-contract', 15)]
DEAL_STAGES = [
    ('opportunity', 30),
    ('proposal-sent', 20),
    ('in-negotiation', 15),
    ('won', 15),
    ('lost', 15),
    ('delayed', 5),
]
SECTORS = [
    'Software',
    'Finance',
    'Healthcare',
    'Retail',
    'Manufacturing',
    'Education',
    'Media',
    'Energy',
    'Logistics',
    'Real Estate',
    'Consulting',
    'Telecom',
]
DEAL_CATEGORIES = ['new business', 'renewal', 'upsell', 'pilot', 'services']
TITLES = [
    'CEO',
    'CTO',
    'CFO',
    'VP Sales',
    'Head of Marketing',
    'Engineer',
    'Product Manager',
    'Account Executive',
    'Designer',
    'Data Analyst',
    'Operations Manager',
    'Buyer',
    None,
]
TASK_TYPES = ['call', 'email', 'meeting', 'demo', 'follow-up', 'lunch']
NOTE_STATUSES = ['cold', 'warm', 'hot', 'in-contract']
TAG_NAMES = [
    'customer',
    'partner',
    'vip',
    'prospect',
    'churn-risk',
    'newsletter',
    'event-2024',
    'event-2025',
    'referral',
    'enterprise',
    'smb',
    'startup',
    'investor',
    'press',
    'supplier',
    'reseller',
    'trial',
    'beta',
    'champion',
    'decision-maker',
]
COLORS = ['#3b82f6', '#10b981', '#f59e0b', '#ef4444', '#8b5cf6', '#ec4899', '#14b8a6', '#64748b']
WORDS = (
    'call back next week pricing renewal contract budget approved demo scheduled follow up '
    'proposal discount quarter pipeline champion blocker security review legal signed onboarding '
    'kickoff integration migration roadmap feedback invoice support escalation meeting intro '
    'requirements timeline stakeholder procurement'
).split()
COMPANY_A = [
    'Acme',
    'Globex',
    'Initech',
    'Umbrella',
    'Stark',
    'Wayne',
    'Hooli',
    'Vandelay',
    'Tyrell',
    'Cyberdyne',
    'Aperture',
    'Oceanic',
    'Nakatomi',
    'Monarch',
    'Blue',
    'North',
    'Bright',
    'Silver',
    'Quantum',
    'Nimbus',
    'Vertex',
    'Apex',
    'Summit',
    'Atlas',
    'Orion',
]
COMPANY_B = [
    'Labs',
    'Systems',
    'Industries',
    'Corp',
    'Holdings',
    'Partners',
    'Analytics',
    'Logistics',
    'Media',
    'Health',
    'Energy',
    'Foods',
    'Capital',
    'Works',
    'Digital',
    'Networks',
    'Group',
]

ORGS = [('Big Bench Corp', 'bigbench.example', 1), ('Small Bench Ltd', 'smallbench.example', 20)]
BENCH_EMAIL = 'bench@bench.invalid'


def log(msg):
    print(f'[load_data {time.strftime("%H:%M:%S")}] {msg}', file=sys.stderr, flush=True)


class Gen:
    """Seeded helpers: ids, weighted choices, timestamps."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def id(self, prefix, ms):
        # the same 26 characters as crmapi.store.new_id; base32 of 20 bytes, last 26 = low 130 bits
        n = ms << 80 | self.rng.getrandbits(80)
        return prefix + base64.b32encode(n.to_bytes(20, 'big'))[6:].translate(_B32_TO_CROCKFORD).decode()

    def weighted(self, items):
        cum, acc = [], 0
        for item in items:
            acc += item[-1]
            cum.append(acc)
        values = [item[0] if len(item) == 2 else item[:-1] for item in items]
        rnd = self.rng.random
        return lambda: values[bisect.bisect_right(cum, rnd() * acc)]

    def sentence(self, lo, hi):
        return ' '.join(self.rng.choice(WORDS) for _ in range(self.rng.randint(lo, hi))).capitalize() + '.'


def ts(ms):
    """crmapi's spelling of an instant (values.format_timestamp): UTC, microseconds, Z."""
    return (EPOCH + dt.timedelta(milliseconds=ms)).replace(tzinfo=None).isoformat(timespec='microseconds') + 'Z'


def day(ms):
    return (EPOCH + dt.timedelta(milliseconds=ms)).date().isoformat()


def spread(i, n, rng):
    """A created_at (ms since EPOCH) increasing with i: records are created over six years."""
    step = SPAN_MS // max(n, 1)
    return i * step + rng.randrange(max(step, 1))


# -- the tables, in dependency order; each generator yields tuples in COLUMNS order ----------------

COLUMNS = {
    'organizations': ['id', 'name', 'created_at'],
    'crm_users': [
        'id',
        'organization_id',
        'first_name',
        'last_name',
        'email',
        'administrator',
        'disabled',
        'created_at',
        'updated_at',
    ],
    'tags': ['id', 'organization_id', 'name', 'color', 'created_at', 'updated_at'],
    'companies': [
        'id',
        'organization_id',
        'name',
        'domain',
        'website',
        'category',
        'size',
        'phone',
        'address',
        'city',
        'country',
        'description',
        'created_at',
        'updated_at',
        'archived_at',
    ],
    'contacts': [
        'id',
        'organization_id',
        'first_name',
        'last_name',
        'email',
        'phone',
        'title',
        'status',
        'city',
        'company_id',
        'linkedin_url',
        'background',
        'tags',
        'created_at',
        'updated_at',
        'archived_at',
    ],
    'deals': [
        'id',
        'organization_id',
        'name',
        'company_id',
        'contact_ids',
        'status',
        'amount',
        'category',
        'description',
        'expected_closing_date',
        'created_at',
        'updated_at',
        'archived_at',
    ],
    'tasks': [
        'id',
        'organization_id',
        'text',
        'type',
        'due_date',
        'done_date',
        'contact_id',
        'company_id',
        'deal_id',
        'assignee_id',
        'created_at',
        'updated_at',
    ],
    'contact_notes': [
        'id',
        'organization_id',
        'contact_id',
        'title',
        'text',
        'date',
        'status',
        'created_at',
        'updated_at',
    ],
}
TABLES = list(COLUMNS)


def plan(contacts):
    """[(org name, domain, {table: rows})]: the big organization has `contacts`, the small one 1/20."""
    out = []
    for name, domain, divisor in ORGS:
        n = max(1, contacts // divisor)
        out.append(
            (
                name,
                domain,
                {
                    'contacts': n,
                    'companies': max(1, n // 10),
                    'deals': max(1, n // 20),
                    'tasks': max(1, n // 5),
                    'contact_notes': max(1, n // 5),
                    'tags': 20,
                    'crm_users': 10,
                },
            )
        )
    return out


class Dataset:
    """Generates every table for every organization; ids are kept so references stay in the org."""

    def __init__(self, contacts, seed):
        self.plan = plan(contacts)
        self.seed = seed
        g = Gen(seed)
        self.orgs = [(g.id('org_', k * 1000), name) for k, (name, _, _) in enumerate(self.plan)]
        self.ids = {}  # (org index, table) -> [ids]

    def rows(self, table):
        if table == 'organizations':
            for k, (org_id, name) in enumerate(self.orgs):
                yield (org_id, name, ts(k * 1000))
            return
        for k, (org_id, _) in enumerate(self.orgs):
            g = Gen(self.seed * 7919 + TABLES.index(table) * 101 + k)
            counts = self.plan[k][2]
            domain = self.plan[k][1]
            yield from getattr(self, 'gen_' + table)(g, k, org_id, counts[table], domain)

    def _keep(self, k, table, ids):
        self.ids[(k, table)] = ids

    def gen_crm_users(self, g, k, org, n, domain):
        ids = []
        for i in range(n):
            ms = spread(i, n, g.rng) // 50
            uid = g.id('u_', ms)
            ids.append(uid)
            first, last = g.rng.choice(FIRST), g.rng.choice(LAST)
            yield (uid, org, first, last, f'{first}.{last}{i}@{domain}'.lower(), i == 0, False, ts(ms), ts(ms))
        self._keep(k, 'crm_users', ids)

    def gen_tags(self, g, k, org, n, domain):
        ids = []
        for i in range(n):
            ms = spread(i, n, g.rng) // 20
            tid = g.id('tag_', ms)
            ids.append(tid)
            yield (
                tid,
                org,
                TAG_NAMES[i % len(TAG_NAMES)] + ('' if i < len(TAG_NAMES) else f'-{i}'),
                COLORS[i % len(COLORS)],
                ts(ms),
                ts(ms),
            )
        self._keep(k, 'tags', ids)

    def gen_companies(self, g, k, org, n, domain):
        rng, ids = g.rng, []
        city = g.weighted(CITIES)
        for i in range(n):
            ms = spread(i, n, rng)
            cid = g.id('comp_', ms)
            ids.append(cid)
            name = f'{rng.choice(COMPANY_A)} {rng.choice(COMPANY_B)}' + (f' {i}' if i >= 300 else '')
            slug = re.sub('[^a-z0-9]', '', name.lower())
            c, country = city()
            yield (
                cid,
                org,
                name,
                f'{slug}.example.com',
                f'https://{slug}.example.com',
                rng.choice(SECTORS),
                rng.choice([5, 10, 50, 250, 1000, 5000]),
                f'+1-555-{rng.randrange(10000):04d}',
                f'{rng.randint(1, 999)} {rng.choice(LAST)} Street',
                c,
                country,
                g.sentence(5, 20) if rng.random() < 0.5 else None,
                ts(ms),
                ts(min(END_MS, ms + rng.randrange(400 * 86400_000))),
                None,
            )
        self._keep(k, 'companies', ids)

    def gen_contacts(self, g, k, org, n, domain):
        rng, ids = g.rng, []
        city = g.weighted(CITIES)
        status = g.weighted(CONTACT_STATUSES)
        # Zipf-like last names: a few very common names, a long tail; many exact duplicates.
        last = g.weighted([(name, 1000 // (r + 3)) for r, name in enumerate(LAST)])
        companies = self.ids[(k, 'companies')]
        tags = self.ids[(k, 'tags')]
        for i in range(n):
            ms = spread(i, n, rng)
            cid = g.id('c_', ms)
            ids.append(cid)
            first, ln = rng.choice(FIRST), last()
            c, _country = city()
            r = rng.random()
            tag_list = [] if r < 0.6 else rng.sample(tags, 1 if r < 0.9 else 2)
            archived = ts(min(END_MS, ms + rng.randrange(200 * 86400_000))) if rng.random() < 0.01 else None
            yield (
                cid,
                org,
                first,
                ln,
                f'{first}.{ln}{i}@{domain}'.lower(),
                f'+1-555-{rng.randrange(10000):04d}' if rng.random() < 0.8 else None,
                rng.choice(TITLES),
                status(),
                c,
                rng.choice(companies) if rng.random() < 0.9 else None,
                f'https://www.linkedin.com/in/{first}-{ln}-{i}'.lower() if rng.random() < 0.3 else None,
                g.sentence(6, 30) if rng.random() < 0.2 else None,
                json.dumps(tag_list, separators=(',', ':')),
                ts(ms),
                ts(min(END_MS, ms + rng.randrange(400 * 86400_000))),
                archived,
            )
        self._keep(k, 'contacts', ids)

    def gen_deals(self, g, k, org, n, domain):
        rng, ids = g.rng, []
        stage = g.weighted(DEAL_STAGES)
        companies, contacts = self.ids[(k, 'companies')], self.ids[(k, 'contacts')]
        for i in range(n):
            ms = spread(i, n, rng)
            did = g.id('d_', ms)
            ids.append(did)
            amount = f'{rng.randrange(500, 250000)}.{rng.choice([0, 0, 0, 50, 99]):02d}'
            yield (
                did,
                org,
                f'{rng.choice(COMPANY_A)} {rng.choice(DEAL_CATEGORIES)} #{i + 1}',
                rng.choice(companies),
                json.dumps(rng.sample(contacts, min(len(contacts), rng.randint(1, 3))), separators=(',', ':')),
                stage(),
                amount,
                rng.choice(DEAL_CATEGORIES),
                g.sentence(4, 16) if rng.random() < 0.4 else None,
                day(ms + rng.randrange(180 * 86400_000)),
                ts(ms),
                ts(min(END_MS, ms + rng.randrange(300 * 86400_000))),
                None,
            )
        self._keep(k, 'deals', ids)

    def gen_tasks(self, g, k, org, n, domain):
        rng = g.rng
        contacts, companies = self.ids[(k, 'contacts')], self.ids[(k, 'companies')]
        deals, users = self.ids[(k, 'deals')], self.ids[(k, 'crm_users')]
        for i in range(n):
            ms = spread(i, n, rng)
            due = ms + rng.randrange(30 * 86400_000)
            r = rng.random()
            yield (
                g.id('t_', ms),
                org,
                g.sentence(3, 10),
                rng.choice(TASK_TYPES),
                day(due),
                day(due + rng.randrange(5 * 86400_000)) if rng.random() < 0.6 else None,
                rng.choice(contacts) if r < 0.8 else None,
                rng.choice(companies) if 0.6 < r < 0.9 else None,
                rng.choice(deals) if r > 0.85 else None,
                rng.choice(users),
                ts(ms),
                ts(ms),
            )

    def gen_contact_notes(self, g, k, org, n, domain):
        rng = g.rng
        contacts = self.ids[(k, 'contacts')]
        for i in range(n):
            ms = spread(i, n, rng)
            yield (
                g.id('cn_', ms),
                org,
                rng.choice(contacts),
                g.sentence(2, 6) if rng.random() < 0.5 else None,
                g.sentence(8, 40),
                ts(ms),
                rng.choice(NOTE_STATUSES),
                ts(ms),
                ts(ms),
            )


def derived(execute, has_table, dialect):
    """Derived data the schema keeps beside the rows: `row_counts` (migration 0003) and contacts' `children_seen`
    (migration 0025), when present.

    Recomputed from the loaded rows as the migrations do: live (non-archived) rows per organization and table; the
    flags by the migration's own statements (PostgreSQL's triggers do not run under session_replication_role =
    replica). `execute(sql)` runs a statement; `has_table(name)` says if it exists.
    """
    if not has_table('row_counts'):
        return
    execute('DELETE FROM row_counts')
    for table in TABLES[1:]:
        live = ' WHERE archived_at IS NULL' if 'archived_at' in COLUMNS[table] else ''
        execute(
            f"INSERT INTO row_counts (organization_id, table_name, n) SELECT organization_id, '{table}', "
            f'COUNT(*) FROM {table}{live} GROUP BY organization_id'
        )
    for statement in children_seen_backfill(dialect):
        execute(statement)


def children_seen_backfill(dialect):
    """The UPDATEs by which migration 0025 sets contacts.children_seen from the children there ([] before 0025)."""
    from crmapi import migrations
    from crmapi.db import SQLiteDatabase

    steps = [sql for version, name, sql in migrations.available(dialect) if name == 'children_seen']
    statements = (
        '\n'.join(line for line in statement.splitlines() if not line.startswith('--'))
        for sql in steps
        for statement in SQLiteDatabase.statements(sql)
    )
    return [statement for statement in statements if statement.startswith('UPDATE contacts SET children_seen')]


def init_db(url):
    """`crmapi init-db`, exactly as an operator runs it."""
    subprocess.run(
        [sys.executable, '-m', 'crmapi', '--database', url, 'init-db'], check=True, cwd=os.path.dirname(HERE)
    )


def sqlite_indexes(con):
    """[(name, CREATE INDEX sql)] of the explicit indexes (not those behind PRIMARY KEY / UNIQUE)."""
    return con.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL").fetchall()


def pg_indexes(con):
    return con.execute(
        'SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND NOT EXISTS '
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = (quote_ident(schemaname) || '.' || "
        'quote_ident(indexname))::regclass)'
    ).fetchall()


def batched(iterable, n):
    buf = []
    for row in iterable:
        buf.append(row)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf


# -- SQLite ----------------------------------------------------------------------------------------


def load_sqlite(path, data, replace):
    if replace:
        for suffix in ('', '-wal', '-shm', '-journal'):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = connect('sqlite:///' + path)
    init_db('sqlite:///' + path)
    with db.transaction() as tx:
        if tx.one('SELECT COUNT(*) FROM organizations')[0]:
            sys.exit(f'load_data: {path} already holds organizations (use --replace)')
    db.close()
    timings = {}
    con = sqlite3.connect(path, isolation_level=None)
    con.execute('PRAGMA journal_mode = DELETE')
    con.execute('PRAGMA synchronous = OFF')
    con.execute('PRAGMA cache_size = -262144')
    con.execute('PRAGMA foreign_keys = OFF')
    indexes = sqlite_indexes(con)
    for name, _ in indexes:
        con.execute(f'DROP INDEX IF EXISTS "{name}"')
    con.execute('BEGIN')
    for table in TABLES:
        t0 = time.time()
        cols = COLUMNS[table]
        sql = f'INSERT INTO {table} ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})'
        n = 0
        for batch in batched(data.rows(table), 20000):
            con.executemany(sql, batch)
            n += len(batch)
        timings[table] = round(time.time() - t0, 2)
        log(f'sqlite {table}: {n} rows in {timings[table]}s')
    derived(
        con.execute,
        lambda t: (
            con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (t,)).fetchone() is not None
        ),
        'sqlite',
    )
    con.execute('COMMIT')
    t0 = time.time()
    for name, sql in indexes:
        con.execute(sql)
    con.execute('ANALYZE')
    timings['indexes+analyze'] = round(time.time() - t0, 2)
    log(f'sqlite indexes + ANALYZE in {timings["indexes+analyze"]}s')
    con.execute('PRAGMA journal_mode = WAL')  # what crmapi sets on every connection anyway
    con.close()
    return timings


# -- PostgreSQL ------------------------------------------------------------------------------------


def create_database(url):
    """CREATE DATABASE for the URL's database when it is missing (through the `postgres` database)."""
    import psycopg
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    name = parts.path.lstrip('/')
    if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', name or '-'):
        return
    with psycopg.connect(urlunsplit(parts._replace(path='/postgres')), autocommit=True) as con:
        if not con.execute('SELECT 1 FROM pg_database WHERE datname = %s', (name,)).fetchone():
            con.execute(f'CREATE DATABASE {name}')
            log(f'pg: created database {name}')


def load_pg(url, data, replace):
    import psycopg

    create_database(url)
    if replace:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute('DROP SCHEMA IF EXISTS public CASCADE')
            con.execute('CREATE SCHEMA public')
    db = connect(url)
    init_db(url)
    with db.transaction() as tx:
        if tx.one('SELECT COUNT(*) FROM organizations')[0]:
            sys.exit('load_data: the database already holds organizations (use --replace)')
    db.close()
    timings = {}
    with psycopg.connect(url) as con:
        indexes = pg_indexes(con)
        try:
            con.execute('SET session_replication_role = replica')  # skip FK triggers (superuser)
            con.commit()
        except psycopg.Error:
            con.rollback()
            log('pg: cannot skip FK triggers (not a superuser); loading with checks')
        for name, _ in indexes:
            con.execute(f'DROP INDEX IF EXISTS "{name}"')
        for table in TABLES:
            t0 = time.time()
            cols = COLUMNS[table]
            n = 0
            with con.cursor() as cur, cur.copy(f'COPY {table} ({", ".join(cols)}) FROM STDIN') as cp:
                for row in data.rows(table):
                    cp.write_row(row)
                    n += 1
            timings[table] = round(time.time() - t0, 2)
            log(f'pg {table}: {n} rows in {timings[table]}s')
        derived(
            con.execute, lambda t: con.execute('SELECT to_regclass(%s)', (t,)).fetchone()[0] is not None, 'postgresql'
        )
        con.commit()
        t0 = time.time()
        for name, sql in indexes:
            con.execute(sql)
        con.commit()
    with psycopg.connect(url, autocommit=True) as con:
        con.execute('VACUUM ANALYZE')
    timings['indexes+analyze'] = round(time.time() - t0, 2)
    log(f'pg indexes + VACUUM ANALYZE in {timings["indexes+analyze"]}s')
    return timings


def search_rows(url):
    """The search rows of every loaded record (crmapi reindex: rows written around the API have none, and `q`
    and the text operators read them): seconds taken."""
    from crmapi.store import reindex_database

    t0 = time.time()
    db = connect(url)
    # NOTE: a bulk rebuild, not a request: at 1M contacts one batch's statement (FTS5 merging its segments) ran
    # past the default 15 s statement timeout on a loaded machine, and the load failed after 15 minutes.
    db.statement_timeout_ms = 0
    try:
        reindex_database(db)
    finally:
        db.close()
    log(f'search rows in {time.time() - t0:.1f}s')
    return round(time.time() - t0, 2)


def make_token(url, org_id):
    db = connect(url)
    try:
        return Accounts(db).create_token(org_id, BENCH_EMAIL, admin=True)
    finally:
        db.close()


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument('--contacts', type=int, default=100_000, help='contacts of the big organization')
    p.add_argument('--seed', type=int, default=42)
    p.add_argument('--sqlite', metavar='PATH', help='SQLite file to create')
    p.add_argument('--pg', metavar='URL', help='PostgreSQL URL (postgresql://user@host:port/db)')
    p.add_argument('--replace', action='store_true', help='start from an empty database')
    p.add_argument('--meta', metavar='FILE', help='write org ids, tokens, counts and timings as JSON')
    a = p.parse_args(argv)
    if not (a.sqlite or a.pg):
        p.error('give --sqlite PATH and/or --pg URL')
    targets = ([('sqlite', 'sqlite:///' + os.path.abspath(a.sqlite))] if a.sqlite else []) + (
        [('postgresql', a.pg)] if a.pg else []
    )
    meta = {
        'loader_version': LOADER_VERSION,
        'contacts': a.contacts,
        'seed': a.seed,
        'plan': [{'name': n, 'rows': c} for n, _, c in plan(a.contacts)],
        'targets': {},
    }
    for engine, url in targets:
        data = Dataset(a.contacts, a.seed)
        log(f'{engine}: loading {a.contacts} contacts (+{plan(a.contacts)[1][2]["contacts"]} in the small org)')
        t0 = time.time()
        timings = (
            load_sqlite(url[len('sqlite:///') :], data, a.replace)
            if engine == 'sqlite'
            else load_pg(url, data, a.replace)
        )
        timings['search rows'] = search_rows(url)
        total = round(time.time() - t0, 1)
        big_org = data.orgs[0][0]
        token = make_token(url, big_org)
        log(f'{engine}: done in {total}s')
        meta['targets'][engine] = {
            'url': url,
            'org_id': big_org,
            'small_org_id': data.orgs[1][0],
            'token': token,
            'seconds': total,
            'timings': timings,
        }
        print(token)
    if a.meta:
        with open(a.meta, 'w') as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
