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

MAX_WORD = 100          # characters of a word kept, in the index and in a query alike
MAX_DOCUMENT = 200_000  # characters of words a record's document keeps (PostgreSQL: a tsvector holds < 1 MiB)
MAX_QUERY_WORDS = 32    # words of one `q`: each is a term of the statement
TRIGRAM = 3             # the shortest folded value a trigram index can serve

_WORD = re.compile(r'[^\W_]+')           # runs of letters and digits (str.isalnum)
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


def email_words(text):
    """An address's words, and its local part as one word (`homer.simpson@` also gives `homersimpson`)."""
    local = words(text.rpartition('@')[0])
    return words(text) + ([''.join(local)[:MAX_WORD]] if len(local) > 1 else [])


def joined(found):
    """Words as stored: each one after a space, so `' ' + prefix` is found exactly at a word start."""
    return ''.join(' ' + w for w in found)


@dataclass(frozen=True)
class Document:
    """What `q` searches in one record: all its words, and those of its name columns (for ranking)."""

    words: str
    names: str


def document(texts, names=(), phones=(), emails=()):
    """The Document of a record from the values of its searchable columns (None skipped).

    `texts` are read as words, `names` too (and rank first), `phones` as one number, `emails` as words
    plus the local part. Each word is kept once, up to MAX_DOCUMENT characters.
    """
    name_words = [w for t in names if t is not None for w in words(t)]
    found = [*name_words, *(w for t in texts if t is not None for w in words(t)),
             *(digits(t) for t in phones if t is not None),
             *(w for t in emails if t is not None for w in email_words(t))]
    kept, size = {}, 0
    for w in found:
        if w and w not in kept:
            size += len(w) + 1
            if size > MAX_DOCUMENT:
                break
            kept[w] = None
    return Document(joined(kept), joined(dict.fromkeys(name_words)))


def field_rows(record, columns):
    """[(column, folded value)] of the non-null text `columns` of `record`: what text operators compare."""
    return [(name, fold(record[name])) for name in columns if record.get(name) is not None]


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


def record_document(info, record):
    """The Document of `record` of resource `info` (the words of the records it refers to, e.g. its
    company's name, are added by the database: see store.Store._documents)."""
    policy = info.spec.search
    names = name_columns(info)
    texts = [record.get(n) for n in word_columns(info) if n not in names and n not in policy.phones
             and n not in policy.emails]
    return document(texts, [record.get(n) for n in names], [record.get(n) for n in policy.phones if n in info.columns],
                    [record.get(n) for n in policy.emails if n in info.columns])
