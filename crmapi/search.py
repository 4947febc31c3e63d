"""Search policy in plain Python (no SQL): folding text, splitting it into words, what a record's
search rows hold and what a `q` asks for.

One function folds both what is indexed and what is asked (`fold`), so the database only ever
compares folded text exactly, and SQLite and PostgreSQL give the same answers:

- `contains`, `starts_with`, `ends_with` compare the folded filter value with the folded column;
- `q` looks for each of its words at the start of a word of the record's searchable text.
"""

import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import orjson

MAX_WORD = 100  # characters of a word kept, in the index and in a query alike
MAX_DOCUMENT = 200_000  # characters of words a record's document keeps (PostgreSQL: a tsvector holds < 1 MiB)
MAX_QUERY_WORDS = 32  # words of one `q`: each is a term of the statement
TRIGRAM = 3  # the shortest folded value a trigram index can serve
PREFIX = 3  # PostgreSQL: the starts of a word kept as lexemes of their own (`prefixes`), 1 to PREFIX characters

_WORD = re.compile(r'[^\W_]+')  # runs of letters and digits (str.isalnum)
_PHONE = re.compile(r'[\d\s+()-]*\d[\d\s+()-]*')
_DIGITS = re.compile(r'\D+')


def fold(text):
    """Case and accents removed, for all of Unicode: NFKD, casefold, NFKD again, combining marks dropped.

    NOTE: casefold may make new marks (`İ` -> `i` + U+0307), hence the second NFKD. `ß` folds to `ss`
    (casefold), ligatures and full-width forms to their letters (NFKD): `straße` matches `STRASSE`.
    """
    if text.isascii():
        return text.lower()
    text = unicodedata.normalize('NFKD', unicodedata.normalize('NFKD', text).casefold())
    return ''.join(ch for ch in text if not unicodedata.category(ch).startswith('M'))


def words(text):
    """The folded words of `text`: `O'Brien` is `o` + `brien`, `www.acme.io` is `www`, `acme`, `io`."""
    return [w[:MAX_WORD] for w in _WORD.findall(fold(text))]


def digits(text):
    """A phone number as one word: its digits (`+44 20 7946` -> `44207946`)."""
    return _DIGITS.sub('', fold(text))[:MAX_WORD]


WORD_START = '  '  # what comes before each word of a record's `words`


def joined(found, start=' '):
    """Words as stored: each one after `start`, so `start + prefix` is found exactly at a word start.

    NOTE: `words` puts two spaces before each word (WORD_START): a trigram index then finds the start of a
    word of one letter too ('  a' is three characters).
    """
    return start + start.join(found) if found else ''


def _split(folded):
    """The words of text folded already (`words` without folding again)."""
    found = _WORD.findall(folded)
    return found if len(folded) <= MAX_WORD else [w[:MAX_WORD] for w in found]


def _email_words(folded):
    found, local = _split(folded), folded.rpartition('@')[0]
    if local.isalnum():  # NOTE: one word (str.isalnum is what _WORD matches): the common case, nothing to add
        return found
    local = _split(local)
    return found + [''.join(local)[:MAX_WORD]] if len(local) > 1 else found


class Row(NamedTuple):
    """What a record's search row holds: its words (q), its name columns' words (ranking), and its text
    columns folded, as one JSON object (contains, starts_with, ends_with) and as lines (the trigram index)."""

    words: str
    names: str
    fields: str
    texts: str  # the values of `fields`, one a line: what the trigram index reads


@dataclass(frozen=True)
class Plan:
    """Which columns of a resource its search rows read, and how (worked out once per write, not per record)."""

    texts: tuple  # every searchable text column: folded into `fields`
    names: tuple  # read as words, ranked first
    words: tuple  # read as words
    phones: tuple  # read as one number: its digits
    emails: tuple  # read as words, plus the local part as one word

    def row(self, record):
        """The Row of `record` (its values as stored), without the words of the records it refers to (a contact's
        company name): the statement that writes the row appends those (`with_related`). Each value is folded once.

        NOTE: this runs for every record a write indexes (a thousand a batch): the values of the columns of one
        kind are split as one text (joined by a newline, which no word holds), and ASCII is folded inline.
        """
        folded = {}
        for name in self.texts:
            value = record.get(name)
            if value is not None:
                folded[name] = value.lower() if value.isascii() else fold(value)
        get = folded.get
        name_words = _split('\n'.join(filter(None, map(get, self.names))))
        found = name_words + _split('\n'.join(filter(None, map(get, self.words))))
        for n in self.phones:
            if n in folded:
                found.append(_DIGITS.sub('', folded[n])[:MAX_WORD])
        for n in self.emails:
            if n in folded:
                found += _email_words(folded[n])
        kept = dict.fromkeys(found)
        kept.pop('', None)
        words = joined(kept, WORD_START)
        if len(words) - len(kept) > MAX_DOCUMENT:  # NOTE: its words' characters and one space each
            words = joined(_bounded(kept), WORD_START)
        return Row(words, joined(dict.fromkeys(name_words)), orjson.dumps(folded).decode(), '\n'.join(folded.values()))


def with_related(words, names):
    """A row's `words` followed by the name words of the records it refers to, given as those records' rows hold
    them (`names`: ' w1 w2', or None): what sqlbuild's search row statement appends in SQL, for rows sent without it
    (PostgreSQL's COPY). The same word in both is kept twice: q and the text operators find a word once or twice alike.
    """
    return words + ''.join(n.replace(' ', WORD_START) for n in names if n)


def prefixes(words):
    """The starts of 1 to PREFIX characters of each word of `words` (a row's `words` as stored, its related words
    included), each after a space (' j jo joh'): PostgreSQL's `prefixes`, whose index finds a q word of up to PREFIX
    characters as one exact lexeme, and a longer one's first PREFIX characters.
    """
    found = words.split()
    return joined(dict.fromkeys([w[:n] for n in range(1, PREFIX + 1) for w in found]))


def _bounded(kept):
    """The first words of `kept` whose document stays within MAX_DOCUMENT characters."""
    out, size = {}, 0
    for w in kept:
        size += len(w) + len(WORD_START)
        if size > MAX_DOCUMENT:
            break
        out[w] = None
    return out


def plan(info):
    """The Plan of resource `info`: its policy's columns (schema.SearchPolicy), else every text column."""
    policy = info.spec.search
    names = tuple(name_columns(info))
    special = {*names, *policy.phones, *policy.emails}
    return Plan(
        tuple(c.name for c in info.search_columns),
        names,
        tuple(n for n in word_columns(info) if n not in special),
        tuple(n for n in policy.phones if n in info.columns),
        tuple(n for n in policy.emails if n in info.columns),
    )


@dataclass(frozen=True)
class Terms:
    """A parsed `q`: a record matches when every word of one of the alternatives starts one of its words.

    A phone-like `q` (digits with spaces, `+`, `-`, `(`, `)`) has two: its digits as one word (the way
    phones are indexed), and its words as usual. A `q` without letters or digits has one empty
    alternative: it matches every record.
    """

    text: str
    alternatives: tuple

    @property
    def words(self):
        """Every word asked for, once: what ranking counts in the name columns."""
        return tuple(dict.fromkeys(w for alternative in self.alternatives for w in alternative))


def parse(text):
    """The Terms of a `q`; ValueError when it has more than MAX_QUERY_WORDS words."""
    found = tuple(dict.fromkeys(words(text)))
    alternatives = [found]
    folded = fold(text).strip()
    if _PHONE.fullmatch(folded):
        number = digits(folded)
        if (number,) != found:
            alternatives.insert(0, (number,))
    if sum(len(a) for a in alternatives) > MAX_QUERY_WORDS:
        raise ValueError(f'has more than {MAX_QUERY_WORDS} words')
    return Terms(text, tuple(alternatives))


def name_columns(info):
    """Columns whose matches rank first: the policy's, else the required text columns (custom objects)."""
    policy = info.spec.search
    if policy.names:
        return [n for n in policy.names if n in info.columns]
    return [c.name for c in info.search_columns if c.required]


def word_columns(info):
    """Columns whose words `q` reads: the policy's, else every searchable text column."""
    policy = info.spec.search
    if policy.words:
        return [n for n in policy.words if n in info.columns]
    return [c.name for c in info.search_columns]
