#!/usr/bin/env python3
"""bench/batch_cpu.py - the CPU time of one 1,000-contact batch create once warm, in-process (SQLite).

    .venv/bin/python bench/batch_cpu.py --root /tmp/base-worktree     # a checkout to measure (default: this one)

bench/batches.py reports the mean CPU of its `--rounds` requests, the first included: that one also compiles the
statements of a new connection (~10 ms more). This prints the first request's CPU apart, then the median and the
minimum CPU and the median wall time of the next `--rounds` requests (after one more warm-up), on a new SQLite
database. Run it from two checkouts in turn, several times each, to compare them on a shared machine.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument('--rounds', type=int, default=10)
    p.add_argument('--size', type=int, default=1000)
    a = p.parse_args(argv)
    root = os.path.abspath(a.root)
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, 'bench'))
    import batches

    db, app, token = batches.fresh('sqlite:///' + os.path.join(tempfile.mkdtemp(), 'batch_cpu.db'))
    kinds = batches.Kinds(app, token, a.size)
    cpu, wall = [], []
    for n in range(a.rounds + 2):
        started, used = time.perf_counter(), time.process_time()
        kinds.create(n)
        cpu.append(time.process_time() - used)
        wall.append(time.perf_counter() - started)
    warm, warm_wall = cpu[2:], wall[2:]
    print(
        f'{root}: first {cpu[0] * 1000:.1f} ms CPU | then {a.rounds} creates of {a.size}: CPU median '
        f'{statistics.median(warm) * 1000:.1f} min {min(warm) * 1000:.1f} ms | wall median '
        f'{statistics.median(warm_wall) * 1000:.1f} ms'
    )
    db.close()


if __name__ == '__main__':
    main()
