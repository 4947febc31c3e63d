"""Streaming a whole filtered list as CSV or NDJSON, in constant memory.

The rows come from a database cursor in batches (a server-side cursor on PostgreSQL) and leave
as encoded chunks; nothing holds the whole set.

Failures: the query runs to its first batch before the status line is sent, so a query that fails
at once is a normal problem+json answer. A failure in a later batch cannot change the 200 any more:
the body then ends, properly, with one trailer line carrying the problem (and the server logs it):
NDJSON `{"error": {<problem>}}`, CSV a record whose first cell is `#error` and whose second is the
problem as JSON. Records never produce either (ids do not start with `#`, records have no `error` key).
"""

import csv
import io
import itertools
import logging

import orjson

from .errors import CrmError
from .errors import problem

BATCH = 500
FORMULA_STARTS = ('=', '+', '-', '@', '\t', '\r')
log = logging.getLogger('crmapi')


def _batches(rows):
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def formula_like(text):
    """Text a spreadsheet would run as a formula, behind any number of `'`: the export adds one `'` to it,
    the import takes one away, and so each gives the other's text back exactly."""
    return text.lstrip("'").startswith(FORMULA_STARTS)


def _plain_cell(value):
    """One CSV cell, as the import reads it back. Text a spreadsheet would run as a formula gets a leading
    `'` (OWASP CSV injection), and so does such text behind a `'` already (see formula_like).

    NOTE: only text is prefixed: numbers (-5) stay numbers. The first character is looked at first: most
    text cannot be a formula, and this runs for every cell of an export.
    """
    if value is None:
        return ''
    if isinstance(value, str):
        return "'" + value if value[:1] in RISKY_FIRST and formula_like(value) else value
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return value


def _json_cell(value):
    """Compact JSON text (a string in quotes), which starts with `{`, `[`, `"`, a digit, `-` of a number, or
    true/false/null: never a formula."""
    return '' if value is None else orjson.dumps(value).decode()


def _array_cell(value):
    """`;`-separated ids."""
    return '' if value is None else ';'.join(value)


CELLS = {'json': _json_cell, 'array': _array_cell}
RISKY_FIRST = frozenset(FORMULA_STARTS) | {"'"}


def _csv_line(cells):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\r\n').writerow(cells)
    return buffer.getvalue().encode()


class NdjsonFormat:
    """One JSON record per line."""

    def __init__(self, info):
        self.slug = info.slug

    def header(self):
        return b''

    def encode(self, batch):
        return b''.join(orjson.dumps(row) + b'\n' for row in batch)

    def trailer(self, body):
        return orjson.dumps({'error': body}) + b'\n'


class CsvFormat(NdjsonFormat):
    """A header line of column names, then one line per record: what `crmapi.imports` reads back."""

    def __init__(self, info):
        from .sqlbuild import output_columns

        super().__init__(info)
        self.names = output_columns(info)
        self.cells = [(name, CELLS.get(info.columns[name].kind, _plain_cell)) for name in self.names]

    def header(self):
        return _csv_line(self.names)

    def encode(self, batch):
        buffer = io.StringIO()
        cells = self.cells
        csv.writer(buffer, lineterminator='\r\n').writerows([[cell(row[n]) for n, cell in cells] for row in batch])
        return buffer.getvalue().encode()

    def trailer(self, body):
        return _csv_line(['#error', orjson.dumps(body).decode()])


def _problem_of(exc):
    if isinstance(exc, CrmError):
        return exc.to_problem()
    return problem(500, 'Internal error', 'The server could not complete the request')


def stream(fmt, rows):
    """The export's body in format `fmt`: runs the query to its first batch now, before any status is sent.

    An error raised here (a statement timeout, the database gone) is the caller's to answer as usual.
    """
    rows = iter(rows)
    first = list(itertools.islice(rows, BATCH))
    return _body(fmt, first, rows)


def _body(fmt, first, rows):
    try:
        header = fmt.header()
        if header:
            yield header
        if first:
            yield fmt.encode(first)
        for batch in _batches(rows):
            yield fmt.encode(batch)
    except Exception as exc:
        # NOTE: the 200 is already sent; end the body properly with a line the client can recognise
        # rather than cutting the connection, and keep the traceback on the server.
        log.error('export of %s failed after its answer started', fmt.slug, exc_info=exc)
        yield fmt.trailer(_problem_of(exc))
    finally:
        # NOTE: a client that goes away closes this generator; close the database's too, so its
        # transaction and connection end now rather than whenever it is collected.
        getattr(rows, 'close', lambda: None)()
