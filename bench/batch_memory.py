#!/usr/bin/env python3
"""bench/batch_memory.py - a process's memory while it takes batches of many different sizes.

    .venv/bin/python bench/batch_memory.py                 # sizes 1,000 down to 861, SQLite in a temporary directory
    .venv/bin/python bench/batch_memory.py --sizes 300 --database postgresql://postgres@127.0.0.1:55439/crm_bench

Each batch size could make statements of its own shape, which every connection prepares and keeps; this posts
`POST /api/contacts` batches of 1,000, 999, … contacts through the WSGI app in-process and prints VmRSS and VmHWM
(/proc/self/status) every 20 sizes. A worker must stay under 60 MB. Nothing is asserted: it measures.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import batches  # noqa: E402  (bench/batches.py, beside this script)


def memory():
    fields = dict(line.split(':', 1) for line in open('/proc/self/status') if line.startswith(('VmRSS', 'VmHWM')))
    return f'VmRSS {fields["VmRSS"].strip()}, VmHWM {fields["VmHWM"].strip()}'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--sizes', type=int, default=140, help='how many batch sizes, from 1,000 down')
    p.add_argument('--database', help='a PostgreSQL URL (default: SQLite in a temporary directory)')
    a = p.parse_args(argv)
    url = a.database or f'sqlite:///{tempfile.mkdtemp()}/crm.db'
    _, app, token = batches.fresh(url)
    print('before:', memory())
    done = 0
    for size in range(1000, 1000 - a.sizes, -1):
        batches.request(app, 'POST', '/api/contacts', token, batches.contacts(size, done, 'm'))
        done += size
        if size % 20 == 0:
            print(f'after the batch of {size}:', memory())
    print('end:', memory())


if __name__ == '__main__':
    main()
