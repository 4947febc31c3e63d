#!/usr/bin/env python3
"""duplicates_bench.py - duplicate detection at scale: time of the first page, recall, false groups.

    python bench/duplicates_bench.py                                   # SQLite, 100,000 contacts
    python bench/duplicates_bench.py --pg postgresql://postgres@127.0.0.1:5432/postgres
    python bench/duplicates_bench.py --contacts 20000 --common-names  # names as skewed as real ones

One organization gets N contacts (N/10 companies, 90 % of contacts with one), of which 2 % are planted
duplicates of other contacts, each a variant the rules are meant to catch: the same email spelt
differently (case, `+tag`, Gmail dots, googlemail.com), the same phone written differently (spaces,
dashes, `00` for `+`), the same name with other case or accents (same company, or the copy without
one), or a typo of one or two letters in the last name (same company). Another organization holds a
copy of some of them, which must never show. Records are written through the store (the API's own
write path), then `GET /api/contacts/duplicates` is called in-process (WSGI, no network):

  - time: the first page (range [0,24]), best of --repeat calls; and one contact's candidates;
  - recall: planted pairs whose two contacts are in one group, over all planted pairs;
  - false groups: groups holding no planted pair, over all groups (every page read).

By default names are drawn from large pools (distinct names, as a planted set needs to be judged);
--common-names draws them from a few hundred real ones, Zipf-like, to show what name collisions do to
the name rules. PostgreSQL: --pg names a server (any database on it); a database of the bench's own is
created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import statistics
import sys
import tempfile
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import webtest  # noqa: E402

from crmapi import create_app  # noqa: E402
from crmapi.accounts import Accounts  # noqa: E402
from crmapi.services import build_services  # noqa: E402
from crmapi.cli import init_db  # noqa: E402
from crmapi.config import Settings  # noqa: E402
from crmapi.db import PostgresDatabase  # noqa: E402
from crmapi.db import SQLiteDatabase  # noqa: E402

FIRST = (
    'Ada Alan Alice Amelia Ana Andrea Anna Arjun Ben Carla Carlos Charlotte Chen Chloe Clara Daniel David '
    'Diego Elena Emma Eric Eva Fatima Felix Grace Hannah Hugo Ines Isabel Ivan Jack James Jan Jana Javier '
    'John Jonas Jose Julia Karen Kenji Laura Lea Leila Leo Li Lina Lucas Lucia Luis Maria Mark Marta Mateo '
    'Mei Mia Michael Mohamed Nadia Noah Nora Olga Olivia Omar Oscar Paul Pedro Peter Priya Rachel Raj Rosa '
    'Sam Sara Sofia Sophie Tom Tomas Valeria Victor Wei Yuki Yusuf Zoe'
).split()
COMMON_LAST = (
    'Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez '
    'Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris '
    'Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill '
    'Muller Schmidt Schneider Fischer Weber Meyer Wagner Becker Dubois Durand Lefebvre Moreau Rossi '
    'Russo Ferrari Silva Santos Oliveira Kowalski Nowak Jensen Nielsen Hansen Sato Suzuki Tanaka '
    'Wang Zhang Liu Kim Park Patel Shah Singh Kumar Khan Ali Cohen Ivanov Petrov'
).split()
ONSETS = 'b br c ch d dr f g gr h j k kl l m n p pr r s sh st t th tr v w z'.split()
VOWELS = 'a e i o u ai ea ie ou y'.split()
CODAS = ['', 'n', 'r', 'l', 's', 'm', 'k', 'nd', 'rt', 'st']
ACCENTS = str.maketrans('aeiouAEIOUcn', 'áéíóúÁÉÍÓÚçñ')
SUFFIXES = ['Inc', 'Ltd', 'LLC', 'GmbH', 'SAS', 'AG', 'BV', 'Corp']
TLDS = ['com', 'io', 'co.uk', 'de', 'fr', 'net']


class Population:
    """A seeded population: the names, emails, phones and companies of N contacts, planted copies included."""

    def __init__(self, n, seed, common_names):
        self.rng = random.Random(seed)
        self.n = n
        self.common = common_names
        self.last_pool = [self.word(2, 3) for _ in range(max(1000, n * 2))]
        self.first_pool = FIRST + [self.word(2, 2) for _ in range(400)]
        self.serial = 0

    def word(self, lo, hi):
        syllables = self.rng.randint(lo, hi)
        return ''.join(
            self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS) for _ in range(syllables)
        ).capitalize()

    def zipf(self, items):
        """An item with probability ~ 1/rank."""
        rank = int(len(items) ** self.rng.random())
        return items[min(rank, len(items)) - 1]

    def names(self):
        if self.common:
            return self.zipf(FIRST), self.zipf(COMMON_LAST)
        return self.rng.choice(self.first_pool), self.rng.choice(self.last_pool)

    def company(self):
        name = f'{self.word(2, 3)} {self.word(1, 2)}'
        host = f'{name.lower().replace(" ", "")}.{self.rng.choice(TLDS)}'
        return {
            'name': f'{name} {self.rng.choice(SUFFIXES)}',
            'domain': host,
            'website': f'https://www.{host}/' if self.rng.random() < 0.5 else None,
        }

    def contact(self, companies):
        first, last = self.names()
        self.serial += 1
        company = self.rng.choice(companies) if self.rng.random() < 0.9 else None
        domain = (
            company['domain']
            if company and self.rng.random() < 0.7
            else self.rng.choice(['gmail.com', 'yahoo.com', 'outlook.com'])
        )
        email = f'{first}.{last}{self.serial}@{domain}'.lower() if self.rng.random() < 0.8 else None
        phone = (
            f'+{self.rng.randint(1, 99)} {self.rng.randint(100, 999)} {self.rng.randint(1000000, 9999999)}'
            if self.rng.random() < 0.6
            else None
        )
        return {
            'first_name': first,
            'last_name': last,
            'email': email,
            'phone': phone,
            'company_id': company['id'] if company else None,
        }

    # -- planted variants: each keeps one thing the rules recognise ---------------------------------

    def email_variant(self, c):
        if not c['email']:
            return None
        local, domain = c['email'].split('@')
        kind = self.rng.randrange(4)
        if kind == 0:
            email = c['email'].upper()
        elif kind == 1:
            email = f'{local}+crm{self.rng.randint(1, 99)}@{domain}'
        elif domain == 'gmail.com':
            email = f'{local.replace(".", "")}@{"googlemail.com" if kind == 3 else "gmail.com"}'
        else:
            email = f'{local.capitalize()}@{domain.upper()}'
        return {**c, 'email': email, 'phone': None, 'last_name': c['last_name'].upper()}

    def phone_variant(self, c):
        if not c['phone']:
            return None
        digits = c['phone'].lstrip('+').split()
        phone = (
            f'00{"".join(digits)}'
            if self.rng.random() < 0.5
            else f'+{digits[0]} ({digits[1]}) {digits[2][:3]}-{digits[2][3:]}'
        )
        return {**c, 'phone': phone, 'email': None, 'first_name': c['first_name'].lower()}

    def name_variant(self, c):
        loose = c['company_id'] is None or self.rng.random() < 0.3
        return {
            **c,
            'email': None,
            'phone': None,
            'first_name': c['first_name'].upper(),
            'last_name': c['last_name'].translate(ACCENTS),
            'company_id': None if loose else c['company_id'],
        }

    def typo_variant(self, c):
        if c['company_id'] is None or len(c['last_name']) < 4:
            return None
        last = list(c['last_name'])
        for _ in range(self.rng.randint(1, 2)):
            i = self.rng.randrange(len(last))
            last[i] = self.rng.choice('aeiouy') if last[i] not in 'aeiouy' else self.rng.choice('rstln')
        return {**c, 'email': None, 'phone': None, 'last_name': ''.join(last)}

    def variant(self, c):
        makers = [self.email_variant, self.phone_variant, self.name_variant, self.typo_variant]
        self.rng.shuffle(makers)
        return next(v for v in (make(c) for make in makers) if v is not None)


def database(args, tmp):
    if not args.pg:
        return SQLiteDatabase(str(tmp / 'dups.db')), None
    import psycopg

    name = 'dups_bench_' + uuid.uuid4().hex[:8]
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE {name}')
    return PostgresDatabase(args.pg.rsplit('/', 1)[0] + '/' + name), name


def drop(args, name):
    import psycopg

    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE {name} WITH (FORCE)')


def load(store, principal, population, planted, log):
    """Write the population through the store: (planted pairs {frozenset(ids)}, planted copies, all ids)."""
    info = store.catalog.resolve('companies', principal)
    companies = [population.company() for _ in range(max(1, population.n // 10))]
    for part in range(0, len(companies), 1000):
        made = store.create_many(info, principal, companies[part : part + 1000])
        for company, record in zip(companies[part : part + 1000], made):
            company['id'] = record['id']
    originals = [population.contact(companies) for _ in range(population.n - planted)]
    chosen = population.rng.sample(range(len(originals)), planted)
    bodies = originals + [population.variant(originals[i]) for i in chosen]
    info = store.catalog.resolve('contacts', principal)
    ids = []
    started = time.perf_counter()
    for part in range(0, len(bodies), 1000):
        ids += [r['id'] for r in store.create_many(info, principal, bodies[part : part + 1000])]
    log(f'loaded {len(bodies)} contacts in {time.perf_counter() - started:.1f}s')
    pairs = {frozenset((ids[i], ids[len(originals) + k])) for k, i in enumerate(chosen)}
    return pairs, bodies[len(originals) :]


def first_page(client, repeat):
    """[(wall seconds, this process's CPU seconds)] of `repeat` calls, and the last answer.

    NOTE: the CPU time is what the request costs the app (with SQLite, the database too), whatever else
    the machine runs; the wall time is what a client waits."""
    times = []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        resp = client.get('/api/contacts/duplicates', {'range': '[0,24]'}, headers=client.auth)
        times.append((time.perf_counter() - started, time.process_time() - cpu))
    return times, resp


def every_group(client):
    groups, start = [], 0
    while True:
        resp = client.get('/api/contacts/duplicates', {'range': f'[{start},{start + 999}]'}, headers=client.auth)
        groups += resp.json
        total = int(resp.headers['Content-Range'].rsplit('/', 1)[1])
        start += 1000
        if start >= total:
            return groups


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--contacts', type=int, default=100_000)
    parser.add_argument('--planted', type=float, default=0.02, help='share of contacts that are planted copies')
    parser.add_argument('--seed', type=int, default=11)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--pg', help='a PostgreSQL URL (the bench makes and drops a database on that server)')
    parser.add_argument('--common-names', action='store_true', help='names from a few hundred real ones')
    args = parser.parse_args(argv)

    def log(message):
        print(f'[dups {time.strftime("%H:%M:%S")}] {message}', file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        db, pg_name = database(args, pathlib.Path(tmp))
        try:
            init_db(db)
            app = create_app(Settings(database_url='injected', access_log=False, statement_timeout_ms=0), db=db)
            store = build_services(db).store
            accounts = Accounts(db)
            org, other = accounts.create_org('Dups Bench'), accounts.create_org('Other Org')
            client = webtest.TestApp(app)
            client.auth = {'Authorization': f'Bearer {accounts.create_token(org, "bench@dups.invalid", True)}'}
            population = Population(args.contacts, args.seed, args.common_names)
            planted = round(args.contacts * args.planted)
            pairs, copies = load(
                store, accounts.authenticate(client.auth['Authorization'][7:]), population, planted, log
            )
            # the other organization: some of the same people, which must never show up
            other_token = accounts.create_token(other, 'other@dups.invalid', True)
            other_client = webtest.TestApp(app)
            for body in copies[:100]:
                other_client.post_json(
                    '/api/contacts', {**body, 'company_id': None}, headers={'Authorization': f'Bearer {other_token}'}
                )
            times, resp = first_page(client, args.repeat)
            groups = every_group(client)
            started = time.perf_counter()
            client.get(f'/api/contacts/{groups[-1]["ids"][0]}/duplicates', headers=client.auth)
            one_record = time.perf_counter() - started
        finally:
            db.close()
            if pg_name:
                drop(args, pg_name)
    found = {frozenset(p) for g in groups for p in pairs if p <= set(g['ids'])}
    false = [
        g
        for g in groups
        if not any(frozenset((a, b)) in pairs for i, a in enumerate(g['ids']) for b in g['ids'][i + 1 :])
    ]
    result = {
        'database': 'postgresql' if args.pg else 'sqlite',
        'contacts': args.contacts,
        'planted_pairs': len(pairs),
        'names': 'common' if args.common_names else 'diverse',
        'first_page_s': round(min(w for w, _ in times), 3),
        'first_page_median_s': round(statistics.median(w for w, _ in times), 3),
        'first_page_cpu_s': round(min(c for _, c in times), 3),
        'load_average': round(os.getloadavg()[0], 1),
        'one_record_s': round(one_record, 3),
        'groups': len(groups),
        'content_range': resp.headers['Content-Range'],
        'recall': round(len(found) / len(pairs), 4),
        'false_groups': len(false),
        'false_group_rate': round(len(false) / max(1, len(groups)), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
