"""A small demo data set, written through the store so that it obeys every rule the API does."""

import random

from .accounts import Accounts
from .accounts import Principal
from .schema import Catalog
from .store import Store

FIRST = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Frances', 'Ken', 'Margaret', 'Linus']
LAST = ['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Allen', 'Thompson', 'Hamilton', 'Torvalds']
CITIES = ['London', 'Paris', 'Berlin', 'Lisbon', 'Oslo', 'Madrid']
STATUSES = ['cold', 'warm', 'hot', 'in-contract']
SECTORS = ['Software', 'Energy', 'Retail', 'Finance', 'Health']


def fill(db, seed=7, companies=8, contacts=40):
    """Create an organization full of records; return an administrator's token."""
    rnd = random.Random(seed)
    accounts = Accounts(db)
    org_id = accounts.create_org('Demo Inc.')
    token = accounts.create_token(org_id, 'admin@demo.example', admin=True)
    principal = accounts.authenticate(token)
    store = Store(db, Catalog.load(db))
    table = store.catalog.resolve
    p = Principal.system(principal.org_id)  # the CLI writes as the server itself
    tags = [
        store.create(table('tags'), p, {'name': n, 'color': c})['id']
        for n, c in [('customer', '#3b82f6'), ('partner', '#10b981'), ('vip', '#f59e0b')]
    ]
    company_ids = [
        store.create(
            table('companies'),
            p,
            {
                'name': f'{rnd.choice(LAST)} {rnd.choice(SECTORS)} {i}',
                'category': rnd.choice(SECTORS),
                'city': rnd.choice(CITIES),
                'size': rnd.choice([10, 50, 250, 1000]),
                'website': f'https://company{i}.example',
            },
        )['id']
        for i in range(companies)
    ]
    contact_ids = []
    for i in range(contacts):
        first, last = rnd.choice(FIRST), rnd.choice(LAST)
        contact_ids.append(
            store.create(
                table('contacts'),
                p,
                {
                    'first_name': first,
                    'last_name': last,
                    'email': f'{first}.{last}{i}@example.com'.lower(),
                    'status': rnd.choice(STATUSES),
                    'city': rnd.choice(CITIES),
                    'company_id': rnd.choice(company_ids),
                    'title': rnd.choice(['CEO', 'CTO', 'Engineer', 'Buyer']),
                    'tags': rnd.sample(tags, rnd.randint(0, 2)),
                },
            )['id']
        )
    for i in range(10):
        deal = store.create(
            table('deals'),
            p,
            {
                'name': f'Deal {i + 1}',
                'company_id': rnd.choice(company_ids),
                'status': rnd.choice(['open', 'won', 'lost']),
                'amount': rnd.randint(1000, 90000) + rnd.choice([0, 0.5, 0.99]),
                'contact_ids': rnd.sample(contact_ids, 2),
                'expected_closing_date': f'2027-0{rnd.randint(1, 9)}-1{rnd.randint(0, 9)}',
            },
        )
        store.create(table('deal_notes'), p, {'deal_id': deal['id'], 'text': 'Kick-off call went well.'})
    for cid in contact_ids[:15]:
        store.create(
            table('tasks'),
            p,
            {
                'contact_id': cid,
                'type': 'call',
                'text': 'Follow up',
                'due_date': '2027-01-15',
                'assignee_id': principal.user_id,
            },
        )
        store.create(table('contact_notes'), p, {'contact_id': cid, 'text': 'Met at the conference.'})
    # NOTE: one planted pair of duplicates (the same mailbox, spelt two ways), so /api/contacts/duplicates shows one
    for email in ('ada.lovelace@example.com', 'Ada.Lovelace+crm@example.com'):
        store.create(
            table('contacts'),
            p,
            {'first_name': 'Ada', 'last_name': 'Lovelace', 'email': email, 'company_id': company_ids[0]},
        )
    return token
