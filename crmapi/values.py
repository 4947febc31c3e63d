"""Column kinds: checking a JSON value against a column, and converting it to and from each driver.

One `check()` serves writes and filters alike, so a value that may be stored may also be
compared, and a value that would make one database fail and the other guess is refused on both.
"""

import datetime as dt
import itertools
import json
import math
import re
from decimal import Decimal
from decimal import InvalidOperation

from .errors import InvalidValue

KINDS = ('text', 'integer', 'number', 'boolean', 'date', 'timestamp', 'json', 'array')
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UTC = dt.timezone.utc
_DATE = re.compile(r'\d{4}-\d{2}-\d{2}\Z')


def kind_of(declared):
    """Map a declared SQL type (either database's spelling) to a column kind and its (precision, scale)."""
    t = declared.strip().lower()
    m = re.match(r'(numeric|decimal)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)', t)
    if m:
        return 'number', (int(m.group(2)), int(m.group(3) or 0))
    if t in ('numeric', 'decimal', 'real', 'double precision', 'float', 'double'):
        return 'number', None
    if t in ('bigint', 'integer', 'int', 'smallint', 'int8', 'int4'):
        return 'integer', None
    if t in ('boolean', 'bool'):
        return 'boolean', None
    if t == 'date':
        return 'date', None
    if t in ('timestamptz', 'timestamp with time zone', 'timestamp', 'timestamp without time zone'):
        return 'timestamp', None
    if t in ('jsonb', 'json'):
        return 'json', None
    return 'text', None


def format_timestamp(value):
    """The one spelling of an instant on the wire and in SQLite: UTC, microseconds, `Z`.

    NOTE: this runs for every timestamp of every record read: PostgreSQL's sessions are in UTC, so its
    instants need no conversion, and formatting the fields directly is 3-4x faster than isoformat().
    """
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return '%04d-%02d-%02dT%02d:%02d:%02d.%06dZ' % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _fail(column, expected, value):
    shown = json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:57] + '...'
    raise InvalidValue(f"Field '{column.name}' expects {expected}, got {shown}", field=column.name)


def unstorable(text):
    """Why no database of ours can store `text` (a NUL, a lone surrogate), or None if both can.

    NOTE: PostgreSQL refuses NUL in text and jsonb while SQLite stores it; no UTF-8 database stores
    a lone surrogate. Refused on both, so the two databases answer alike.
    """
    if '\x00' in text:
        return 'a NUL character'
    if _lone_surrogate(text):
        return 'a lone surrogate, which is not valid Unicode'
    return None


def unstorable_among(texts):
    """Why the first of `texts` that no database of ours can store cannot be (see unstorable), or None."""
    return next(filter(None, map(unstorable, texts)), None)


def _lone_surrogate(text):
    if text.isascii():
        return False
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return True
    return False


def _text(column, value):
    if type(value) is str and value.isascii() and '\x00' not in value:
        return value  # NOTE: the common case, checked at once: an import checks millions of cells
    if not isinstance(value, str):
        _fail(column, 'a string', value)
    reason = unstorable(value)
    if reason:
        raise InvalidValue(f"Field '{column.name}' may not contain {reason}", field=column.name)
    return value


def _integer(column, value):
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(column, 'an integer', value)
    if not INT64_MIN <= value <= INT64_MAX:
        _fail(column, 'a 64-bit integer', value)
    return value


def _number(column, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        _fail(column, 'a number', value)
    try:
        exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        _fail(column, 'a number', value)
    if not exact.is_finite():
        _fail(column, 'a finite number', value)
    if column.precision:
        precision, scale = column.precision
        exact = exact.normalize()
        exponent = exact.as_tuple().exponent
        if exponent < -scale:
            _fail(column, f'a number with at most {scale} decimal places', value)
        if abs(exact) >= Decimal(10) ** (precision - scale):
            _fail(column, f'a number below 10^{precision - scale} in magnitude', value)
    elif len(exact.normalize().as_tuple().digits) > 15 or abs(exact) > Decimal('1e300'):
        # NOTE: SQLite keeps an unconstrained NUMERIC as a double: 15 significant digits read back
        # exactly on both databases, more would not.
        _fail(column, 'a number of at most 15 significant digits', value)
    return exact


def _boolean(column, value):
    if not isinstance(value, bool):
        _fail(column, 'true or false', value)
    return value


def _date(column, value):
    if not isinstance(value, str) or not _DATE.match(value):
        _fail(column, 'a date as YYYY-MM-DD', value)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        _fail(column, 'a valid calendar date', value)


def _timestamp(column, value):
    if not isinstance(value, str) or not _DATE.match(value[:10]) or len(value) > 40:
        _fail(column, 'an ISO 8601 timestamp', value)
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        _fail(column, 'a valid ISO 8601 timestamp', value)


def _json_leaves(value):
    """Every key and scalar of a JSON value, at any depth (iteratively: depth is bounded elsewhere)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield from item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def _json(column, value):
    for leaf in _json_leaves(value):
        # NOTE: SQLite would keep a bare integer this large as a double, and the JSON encoder stops
        # at 64 bits: refuse rather than round.
        if isinstance(leaf, int) and not isinstance(leaf, bool) and not INT64_MIN <= leaf <= INT64_MAX:
            _fail(column, 'JSON whose integers fit in 64 bits', value)
        reason = isinstance(leaf, str) and unstorable(leaf)
        if reason:
            raise InvalidValue(
                f"Field '{column.name}' may not contain {reason} in a key or a string", field=column.name
            )
    return value


def _array(column, value):
    if not isinstance(value, list) or not all(isinstance(v, str) and v and not unstorable(v) for v in value):
        _fail(column, 'an array of ids', value)
    return list(dict.fromkeys(value))


_CHECKS = {
    'text': _text,
    'integer': _integer,
    'number': _number,
    'boolean': _boolean,
    'date': _date,
    'timestamp': _timestamp,
    'json': _json,
    'array': _array,
}


def check(column, value):
    """Validate one JSON value for `column`; return it in canonical Python form (None stays None)."""
    if value is None:
        return None
    return _CHECKS[column.kind](column, value)


def check_stored(column, value):
    """check() for a value about to be written: indexed text also within the column's max_length.

    Filters are not held to it: comparing with a longer value is harmless and simply finds nothing.
    """
    if type(value) is not str or column.kind != 'text' or not value.isascii() or '\x00' in value:
        value = check(column, value)  # NOTE: else plain text, _text's common case, checked here in one step
    if column.max_length is not None and isinstance(value, str) and len(value) > column.max_length:
        raise InvalidValue(
            f"Field '{column.name}' is indexed and holds at most {column.max_length} characters, got {len(value)}",
            field=column.name,
        )
    return value


def number_out(value):
    """Exact decimals leave as JSON numbers, integral ones without a fraction, alike on both databases."""
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def converted(convert, column):
    """`convert` applied to each value of `column` but None; a value that is the very object before it (a batch's
    shared timestamp) is converted once."""
    out, last, done = [], None, None
    for value in column:
        if value is not last:
            last, done = value, None if value is None else convert(value)
        out.append(done)
    return out


# NOTE: what a record read back holds for a value check() gave, kind by kind (the kinds not listed hold it as it
# is): both databases' readers (crmapi.db) answer these, so a new record is known without reading it again.
READ_BACK = {'timestamp': format_timestamp, 'date': dt.date.isoformat, 'number': number_out}


_QUOTED_DEFAULT = re.compile(r"'((?:[^']|'')*)'(?:::[a-z ]+)?\Z", re.I)
_PLAIN_DEFAULT = re.compile(r'(null|true|false|-?\d+)(?:::[a-z ]+)?\Z', re.I)


def default_value(kind, default):
    """The value a column's default (its SQL text, as either database describes it) gives, as check() would
    give it: (True, value), or (False, None) for a default that is not one of these plain literals.

    NOTE: only constants (NULL, TRUE/FALSE, a whole number, a quoted string, with PostgreSQL's `::type`); an
    expression such as now() is not known before the row is written.
    """
    if default is None:
        return True, None
    quoted, plain = _QUOTED_DEFAULT.match(default.strip()), _PLAIN_DEFAULT.match(default.strip())
    text = quoted.group(1).replace("''", "'") if quoted else plain.group(1).lower() if plain else None
    if text is None:
        return False, None
    if plain and text == 'null':
        return True, None
    try:
        if kind == 'text' and quoted:
            return True, text
        if kind == 'boolean' and text.lower() in ('true', 'false'):
            return True, text.lower() == 'true'
        if kind == 'integer' and re.fullmatch(r'-?\d+', text):
            return True, int(text)
        if kind in ('json', 'array') and quoted:
            return True, json.loads(text)
    except ValueError:
        pass
    return False, None


def finite_float(text):
    """`parse_float` for request bodies: 1e400 is not a number we can store."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f'number out of range: {text}')
    return value


def _unique_keys(pairs):
    value = dict(pairs)
    if len(value) != len(pairs):
        keys = [k for k, _ in pairs]
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key '{duplicate}'")
    return value


def _no_constant(name):
    raise ValueError(f'{name} is not valid JSON')


MAX_JSON_DEPTH = 64


class JsonError(ValueError):
    """Valid JSON we still refuse; `field` is the top-level key it sits under, when there is one."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


def _check_tree(value, strings=True):
    """No deeper than MAX_JSON_DEPTH, and (with `strings`) no lone surrogate: valid JSON, but not storable text.

    NOTE: without `strings` only containers are walked: a batch's strings are most of its values, and a body
    of objects of scalars (a batch's, a record's) is not walked at all (see _shallow).
    """
    if not strings and _shallow(value):
        return
    walked = (*_CONTAINERS, str) if strings else _CONTAINERS
    stack = [(value, 1, None)] if type(value) in walked else []
    while stack:
        item, depth, top = stack.pop()
        if type(item) is str:
            if _lone_surrogate(item):
                raise JsonError('a string holds a lone surrogate, which is not valid Unicode', top)
            continue
        if depth >= MAX_JSON_DEPTH and item:
            raise JsonError(f'nested more than {MAX_JSON_DEPTH} levels deep', top)
        if type(item) is dict:
            for key, v in item.items():
                under = key if depth == 1 else top
                if strings:
                    stack.append((key, depth + 1, under))
                if type(v) in walked:
                    stack.append((v, depth + 1, under))
        else:
            stack.extend((x, depth + 1, top) for x in item if type(x) in walked)


_CONTAINERS = frozenset((dict, list))


def _shallow(value):
    """Whether `value` is a scalar, an object of scalars, or an array of scalars and objects of scalars: at most
    three levels, nothing for _check_tree to walk. NOTE: the types are gathered by map and set, without a Python
    step per value (a batch of 1,000 records spent ~1 ms in the walk)."""
    if type(value) is dict:
        objects = (value,)
    elif type(value) is list:
        kinds = set(map(type, value))
        if list in kinds:
            return False
        objects = value if kinds == {dict} else [item for item in value if type(item) is dict]
    else:
        return True
    return _CONTAINERS.isdisjoint(map(type, itertools.chain.from_iterable(map(dict.values, objects))))


def ascii_json(value, **options):
    """JSON text escaped to ASCII, for values orjson (the JSON library everywhere else) refuses: a lone
    surrogate (an echoed request line or path) or an integer past 64 bits (a client's body before it is
    checked). `options` are json.dumps's. Byte for byte what earlier releases hashed and signed."""
    return json.dumps(value, **options)


def loads_strict(text):
    """Parse JSON as the API accepts it: no NaN or Infinity, no repeated keys, no overflowing floats,
    at most 64 levels deep, no lone surrogates.

    NOTE: the standard library's parser, for its hooks: orjson cannot report a repeated key.

    Raises ValueError with a readable message.
    """
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=finite_float)
    except RecursionError:
        raise JsonError(f'nested more than {MAX_JSON_DEPTH} levels deep') from None
    # NOTE: no string can hold a surrogate when the text has none, nor a \uD800-\uDFFF escape
    _check_tree(value, strings='\\ud' in text or '\\uD' in text or _lone_surrogate(text))
    return value
