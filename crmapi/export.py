"""Streaming a whole filtered list as CSV or NDJSON, in constant memory.

The rows come from a database cursor in batches (a server-side cursor on PostgreSQL) and leave
as encoded chunks; nothing holds the whole set.
"""
import csv
import io

import orjson

BATCH = 500


def _chunks(rows, encode):
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield encode(batch)
            batch = []
    if batch:
        yield encode(batch)


def _cell(value):
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def csv_stream(info, rows):
    """A header line of column names, then one line per record; JSON fields as compact JSON."""
    from .sqlbuild import output_columns
    names = output_columns(info)

    def encode(batch):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator='\r\n')
        writer.writerows([[_cell(row[n]) for n in names] for row in batch])
        return buffer.getvalue().encode()
    header = io.StringIO()
    csv.writer(header, lineterminator='\r\n').writerow(names)
    yield header.getvalue().encode()
    yield from _chunks(rows, encode)


def ndjson_stream(info, rows):
    """One JSON record per line."""
    yield from _chunks(rows, lambda batch: b''.join(orjson.dumps(row) + b'\n' for row in batch))
