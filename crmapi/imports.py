"""CSV import: a header row of field names, then one record a line, written through the store's batch path.

The body is read as a stream (csv.reader over UTF-8 lines of a byte-counting reader), each cell typed
from its column's kind, and handed to the store's batch write in parts of at most BATCH records. Memory
stays flat except for what the transaction holds: a bad line is remembered as a problem (at most
MAX_LISTED of them in full), never as the rows around it.

`import_csv` is the API's import: one transaction, all or nothing, every bad line found and listed.
`land` is one batch of the CLI's import: its own transaction, the bad lines left out and reported.

A body is read whole before its transaction starts (`spooled`: to disk past SPOOL_MEMORY), so that a
slow client never holds the database's write lock.
"""

import csv
import itertools
import re
import tempfile
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal

from . import values
from .errors import BadRequest
from .errors import Conflict
from .errors import CrmError
from .errors import InvalidBody
from .errors import InvalidValue
from .errors import PayloadTooLarge
from .db import translate_errors
from .export import formula_like
from .schema import snake_case
from .store import named_items
from .store import raise_all
from .store import unknown_field

BATCH = 1000  # records a call of the store's batch path takes at most
MAX_LISTED = 100  # problems a refused import lists; `error_count` counts them all
MAX_LINE_BYTES = 1024 * 1024  # one physical line, as much as a JSON body may hold
SPOOL_MEMORY = 1024 * 1024  # of a CSV body; the rest of it waits on disk
SPOOL_CHUNK = 64 * 1024
# NOTE: bounded, so that int() and Decimal arithmetic never meet a number beyond their limits (a 500): a
# longer one stays text, and the store's check refuses it.
_INTEGER = re.compile(r'[+-]?\d{1,20}\Z')
_NUMBER = re.compile(r'[+-]?(?:\d{1,40}\.?\d{0,40}|\.\d{1,40})(?:[eE][+-]?\d{1,3})?\Z')
_BOOLEANS = {'true': True, 'false': False}
# NOTE: the csv module's wording assumes a Python programmer holds the file.
_CSV_ERRORS = {
    'unexpected end of data': 'a quoted cell is never closed',
    'new-line character seen in unquoted field': 'a line break (CR) inside a cell that is not quoted; '
    'save the file with LF or CRLF line ends',
    "',' expected after '\"'": 'a quoted cell goes on after its closing quote',
    'field larger than field limit': f'a cell is longer than {csv.field_size_limit()} characters',
}


class CountingReader:
    """A byte stream read through, counting the bytes; past `limit` (when given) a 413, nothing more read."""

    def __init__(self, stream, limit=None):
        self.stream = stream
        self.limit = limit
        self.count = 0

    def read(self, size):
        return self._counted(self.stream.read, size)

    def readline(self, size):
        return self._counted(self.stream.readline, size)

    def _counted(self, read, size):
        if self.limit is not None:
            size = min(size, self.limit + 1 - self.count)
        try:
            data = read(size)
        except Exception:  # NOTE: servers raise their own types for a malformed chunk or a client gone mid-body
            raise InvalidBody(
                'The CSV could not be read to its end: the chunked encoding is malformed or the body is cut short'
            ) from None
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise too_large(self.limit)
        return data


def too_large(limit):
    return PayloadTooLarge(
        f'The CSV is larger than {limit} bytes (CRMAPI_MAX_IMPORT_BYTES): split it, or import it with `crmapi import`',
        limit=limit,
    )


def spooled(stream, limit):
    """The whole body of `stream` in a temporary file (in memory up to SPOOL_MEMORY), or a 413 past `limit`.

    NOTE: read before the import's transaction starts, so that a slow client never holds the write lock
    (SQLite's, and PostgreSQL's row locks) while it uploads; memory stays flat, the rest goes to disk.
    """
    spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY)
    try:
        reader = CountingReader(stream, limit)
        while chunk := reader.read(SPOOL_CHUNK):
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def text_lines(stream):
    """The UTF-8 lines of `stream` (ends kept, a BOM dropped), each at most MAX_LINE_BYTES."""
    number = 0
    while line := stream.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise InvalidBody(f'Line {number} is longer than {MAX_LINE_BYTES} bytes', line=number)
        try:
            text = line.decode('utf-8')
        except UnicodeDecodeError as exc:
            raise InvalidBody(
                f'Line {number} is not UTF-8 text (byte {exc.start + 1} of the line): save the file as UTF-8',
                line=number,
            ) from None
        yield text[1:] if number == 1 and text.startswith('\ufeff') else text


@dataclass
class Row:
    """One record of the CSV: the line it starts on, its cells as sent, and what they say."""

    line: int
    cells: list
    record: dict = None
    problems: list = field(default_factory=list)  # [{'field', 'detail'}]: why it cannot be written


class CsvRecords:
    """The records of a CSV byte stream, typed for `info`; the header is read (and checked) at once.

    Iterating gives a Row per record line; a row the parser refuses carries its problems instead
    of a record. Blank lines are skipped.
    """

    def __init__(self, info, stream, lenient=False):
        self.info = info
        self.reader = csv.reader(text_lines(stream), strict=True)
        self.header = self._next()
        if not self.header or self.header == ['']:
            raise InvalidBody('The CSV is empty: its first line is a header naming the fields')
        self.columns = header_columns(info, [cell.strip() for cell in self.header], lenient)

    def _next(self):
        try:
            return next(self.reader, None)
        except csv.Error as exc:
            line = self.reader.line_num
            reason = next((text for start, text in _CSV_ERRORS.items() if str(exc).startswith(start)), exc)
            raise InvalidBody(f'Line {line} is not valid CSV: {reason}', line=line) from None

    def __iter__(self):
        while True:
            start = self.reader.line_num + 1
            cells = self._next()
            if cells is None:
                return
            if cells:
                yield self._row(start, cells)

    def _row(self, line, cells):
        if len(cells) != len(self.columns):
            return Row(
                line,
                cells,
                problems=[
                    {
                        'field': None,
                        'detail': f'{cells_phrase(len(cells))} where the header has {len(self.columns)}',
                    }
                ],
            )
        record, problems = {}, []
        for column, cell in zip(self.columns, cells):
            if column is not None:
                try:
                    record[column.name] = typed(column, cell)
                except InvalidValue as exc:
                    problems.append({'field': column.name, 'detail': exc.detail})
        return Row(line, cells, None if problems else record, problems)


def cells_phrase(count):
    """`1 cell`, `3 cells`: a ragged row's detail, which its line number prefixes wherever it is shown."""
    return f'{count} cell' if count == 1 else f'{count} cells'


def header_columns(info, names, lenient=False):
    """The column each header cell names (snake_case or camelCase); None for one whose cells are ignored.

    Read-only columns (id, created_at, … and what a view adds) are ignored, so an export imports as it is;
    an unknown name is a 400 naming it (ignored with `lenient`); a column named twice is a 400.
    """
    columns, seen, problems = [], {}, []
    for position, key in enumerate(names, 1):
        name = key if key in info.columns else snake_case(key)
        column = info.columns.get(name)
        if not key:
            problems.append(InvalidBody(f'Column {position} of the header is empty: name its field', field=key))
        elif column is None and name not in info.read_only_fields and not lenient:
            problems.append(unknown_field(info.slug, key, name, info.writable))
        elif name in seen:
            problems.append(
                InvalidBody(f"The header names '{name}' twice (columns {seen[name]} and {position})", field=key)
            )
        seen.setdefault(name, position)
        columns.append(column if column is not None and column.writable else None)
    raise_all(problems)
    return columns


def _text(column, cell):
    """A text cell, less the `'` an export puts before what a spreadsheet would run as a formula."""
    return cell[1:] if cell.startswith("'") and formula_like(cell) else cell


def _json(column, cell):
    try:
        return values.loads_strict(cell)
    except ValueError as exc:
        raise InvalidValue(
            f"Field '{column.name}' expects JSON text, got {cell[:40]!r}: {exc}", field=column.name
        ) from None


# NOTE: a cell that does not parse stays a string, so the store's own check (values.check) refuses it in
# the same words as a JSON body's.
_TYPES = {
    'text': _text,
    'integer': lambda column, cell: int(cell) if _INTEGER.match(cell) else cell,
    'number': lambda column, cell: Decimal(cell) if _NUMBER.match(cell) else cell,
    'boolean': lambda column, cell: _BOOLEANS.get(cell.lower(), cell),
    'json': _json,
    'array': lambda column, cell: [part.strip() for part in cell.split(';') if part.strip()],
}


def typed(column, cell):
    """A cell as the JSON value its column takes: empty is null (an empty array for an array column)."""
    if cell == '':
        return [] if column.kind == 'array' else None
    convert = _TYPES.get(column.kind)
    return cell if convert is None else convert(column, cell)


# -- writing ------------------------------------------------------------------------------------------------


class BadRows(Exception):
    """A batch write refused these rows: [(row, {'field', 'detail'})]."""

    def __init__(self, problems):
        super().__init__(f'{len(problems)} problems')
        self.problems = problems


def _call(write_batch, rows):
    """write_batch over at most BATCH rows: (created, updated). A refusal that names its items (`index`)
    becomes BadRows, the items its details name called by their lines (the one place that maps them); any
    other error is raised as a CrmError (a driver's too, here rather than where the transaction ends, so
    that the import can say where it was)."""
    try:
        with translate_errors():
            return write_batch([row.record for row in rows])
    except BadRequest as exc:
        named = [
            (
                rows[p['index']],
                {'field': p.get('field'), 'detail': named_items(p, lambda index: rows[index].line, 'Lines')},
            )
            for p in exc.members.get('errors') or ()
            if 'index' in p
        ]
        if not named:
            raise
        raise BadRows(named) from None


def write_valid(write_batch, rows):
    """At most BATCH rows through write_batch, less those it refuses: (created, updated, refused), where
    refused is [(row, problem)] in line order, the parser's problems included.

    NOTE: a refused call writes nothing, and the batch path checks values before references: the rest is
    sent again, so that every problem of every row is found.
    """
    refused = [(row, problem) for row in rows for problem in row.problems]
    pending = [row for row in rows if not row.problems]
    created = updated = 0
    while pending:
        try:
            created, updated = _call(write_batch, pending)
            break
        except BadRows as exc:
            refused += exc.problems
            bad = {id(row) for row, _ in exc.problems}
            pending = [row for row in pending if id(row) not in bad]
    return created, updated, sorted(refused, key=lambda item: item[0].line)


class Problems:
    """The problems of an import by line: the first MAX_LISTED in full, all of them counted."""

    def __init__(self):
        self.listed = []
        self.count = 0

    def add(self, refused):
        for row, problem in refused:
            self.count += 1
            if len(self.listed) < MAX_LISTED:
                self.listed.append({'line': row.line, 'field': problem['field'], 'detail': problem['detail']})

    def raise_any(self):
        if self.count:
            first, more = self.listed[0], self.count - 1
            more = f' (and {more} more problem{"s" if more > 1 else ""})' if more else ''
            raise InvalidBody(
                f'Line {first["line"]}: {first["detail"]}{more}; nothing was imported',
                line=first['line'],
                field=first['field'],
                errors=self.listed,
                error_count=self.count,
            )


def located(exc, rows):
    """An error about a part of the import that names no record (a conflict): it says which lines it was in."""
    exc.detail = f'{exc.detail} (a record of lines {rows[0].line} to {rows[-1].line})'
    return exc


def import_csv(store, info, principal, stream, on_conflict=None, write_batch=None, lenient=False):
    """Every record of the CSV byte `stream` written in ONE transaction, or none: (created, updated).

    A bad line does not stop the reading, so the 400 lists every bad line; the rows after it are still
    written (the batch path is also what checks them) and rolled back with the rest.
    """
    write_batch = write_batch or batch_writer(store, info, principal, on_conflict)
    records, problems, created, updated = CsvRecords(info, stream, lenient), Problems(), 0, 0
    with store.db.transaction(write=True):
        for rows in chunks(records, BATCH):
            try:
                done_created, done_updated, refused = write_valid(write_batch, rows)
            except BadRequest:
                raise  # about the request itself (on_conflict), not one of its records
            except CrmError as exc:
                problems.raise_any()
                raise located(exc, rows)
            problems.add(refused)
            created, updated = created + done_created, updated + done_updated
        problems.raise_any()
    return created, updated


def land(store, write_batch, rows):
    """One batch of the CLI's import in its own transaction, less its bad rows: (created, updated, refused),
    where refused is [(row, detail)] in line order.

    An error that names no row (a conflict) has the rows written one by one, so only the rows at fault are refused.
    """
    created = updated = 0
    refused = []
    try:
        with store.db.transaction(write=True):
            for part in chunks(rows, BATCH):
                done_created, done_updated, done_refused = write_valid(write_batch, part)
                created, updated, refused = created + done_created, updated + done_updated, refused + done_refused
    except (BadRequest, Conflict) as exc:
        if 'param' in exc.members:
            raise  # about the command itself (on_conflict), not one of its records
        return _one_by_one(store, write_batch, rows)
    return created, updated, by_row(refused)


def _one_by_one(store, write_batch, rows):
    created = updated = 0
    refused = []
    for row in rows:
        try:
            with store.db.transaction(write=True):
                done_created, done_updated, done_refused = write_valid(write_batch, [row])
        except (BadRequest, Conflict) as exc:
            if 'param' in exc.members:
                raise
            done_created, done_updated, done_refused = 0, 0, [(row, {'field': None, 'detail': exc.detail})]
        created, updated, refused = created + done_created, updated + done_updated, refused + done_refused
    return created, updated, by_row(refused)


def by_row(refused):
    """[(row, problem)] -> [(row, what is wrong with it)], one item a row."""
    rows = {}
    for row, problem in refused:
        rows.setdefault(id(row), (row, []))[1].append(problem['detail'])
    return [(row, '; '.join(details)) for row, details in rows.values()]


def chunks(items, size):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# -- the store's batch path ---------------------------------------------------------------------------------


def batch_writer(store, info, principal, on_conflict=None):
    """write_batch(records) -> (created, updated): the store's batch create, or its upsert on `on_conflict`.

    It runs inside the caller's transaction (the store's own joins it) and refuses a batch with bad
    items as the batch path does: the first problem, with `index` and `errors: [{index, field, detail}]`.
    """
    if on_conflict is None:
        return lambda records: (len(store.create_many(info, principal, records)), 0)
    return lambda records: tuple(store.upsert(info, principal, records, on_conflict)[1:])
