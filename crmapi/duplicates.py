"""Probable duplicates: normalised keys, the reasons two records match, and their scores. Pure Python.

Nothing here reads the database: the store streams the columns a Matcher names (`columns`, after the
id) and hands the rows over. Finding duplicates is blocking: each record is filed under a few keys
(its normalised email, phone, name, ...), and only the records that share a block are compared, never
all pairs. A block's kind is the reason its pairs match, so the organization-wide list and one
record's candidates are the same computation: the candidates of a record are the pairs of the blocks
it is filed under (see `candidates`).

Scores: each reason has a weight (the chance it alone means a duplicate); a pair's score is
1 - the product of (1 - weight) over its reasons (independent evidence), so more reasons score
higher and no score reaches 1. A group (records linked by pairs, transitively) scores its weakest
member's best link: every record of the group is at least that likely a duplicate of another one.
"""

import collections
import contextlib
import gc
import itertools
import re
import threading
import unicodedata
from dataclasses import dataclass

GMAIL = ('@gmail.com', '@googlemail.com')  # one mailbox, whichever domain and dots it is spelt with
MIN_PHONE_DIGITS = 7  # fewer digits is an extension or junk ('0', '112'), not a person's number
# NOTE: a key shared by more records than this (a switchboard number, info@, a very common name without
# a company) says nothing about who is who: its block is left out, or it would glue strangers together.
MAX_BLOCK = 50
# Similar names are compared pairwise within a block, so a block is kept small enough to compare.
MAX_SIMILAR_BLOCK = 200
MAX_EDITS = 2
LEGAL_SUFFIXES = frozenset(
    'ab ag aps as bv co company corp corporation gmbh inc incorporated kg kk limited llc llp lp ltd mbh nv '
    'oy oyj plc pte pty sa sarl sas spa srl'.split()
)
# NOTE: hosts that many unrelated companies put in their `website` (a page on a social network) or
# `domain` (a mailbox provider): sharing one of them is no sign of being the same company.
SHARED_HOSTS = frozenset(
    'facebook.com linkedin.com twitter.com x.com instagram.com youtube.com google.com sites.google.com '
    'gmail.com googlemail.com yahoo.com hotmail.com outlook.com live.com icloud.com aol.com '
    'wixsite.com wordpress.com blogspot.com github.com'.split()
)

# -- normalisation ---------------------------------------------------------------------------------

# Letters NFKD does not decompose into a base letter and an accent.
_LETTERS = str.maketrans(
    {'ø': 'o', 'đ': 'd', 'ł': 'l', 'ħ': 'h', 'ŧ': 't', 'ı': 'i', 'æ': 'ae', 'œ': 'oe', 'ð': 'd', 'þ': 'th'}
)
_ASCII_DROPPED = str.maketrans('', '', ''.join(c for c in map(chr, range(128)) if not c.isalnum() and c != '\n'))
_ASCII_NOT_DIGIT = str.maketrans('', '', ''.join(c for c in map(chr, range(128)) if c not in '0123456789\n'))
_DROPPED = re.compile(r'[^\w]|_')  # \w is what str.isalnum() accepts, and '_'
_NOT_DIGIT = re.compile(r'[^0-9\n]+')
_ASCII_SPACES = ' \t\r\x0b\x0c\x1c\x1d\x1e\x1f'  # what str.strip() strips, besides line breaks
_PLUS_TAG = re.compile(r'\+[^\n]*(?=@[^@\n]*$)', re.MULTILINE)
_SCHEME = re.compile(r'^[a-z][a-z0-9+.-]*://')
_HOST_END = re.compile(r'[/?#\\]')


def _joined(texts):
    """(`texts` with None as '' and no line break inside, those texts joined by line breaks).

    NOTE: a whole column goes through each string method at once, one text a line, at C speed: per text,
    a function call would cost more than the work. A line break inside a text becomes a space (every
    normalisation drops both), so the lines stay aligned.
    """
    texts = ['' if t is None else t for t in texts]
    joined = '\n'.join(texts)
    if joined.count('\n') != len(texts) - 1:
        texts = [t.replace('\n', ' ') for t in texts]
        joined = '\n'.join(texts)
    return texts, joined


def fold_all(texts):
    """Each text case- and accent-folded to its letters and digits: "Zoë O'Brien-Lévy" -> 'zoeobrienlevy'.

    The texts that are not ASCII are folded one by one: NFKD turns accents into combining marks, which are
    not alphanumeric.
    """
    texts, joined = _joined(texts)
    if joined.isascii():
        return joined.lower().translate(_ASCII_DROPPED).split('\n')
    # NOTE: str.translate is fast on ASCII text only: the other texts are left out of the column's pass
    others = {i: t for i, t in enumerate(texts) if not t.isascii()}
    folded = (
        '\n'.join(['' if i in others else t for i, t in enumerate(texts)]).lower().translate(_ASCII_DROPPED).split('\n')
    )
    for i, text in others.items():
        folded[i] = _DROPPED.sub('', unicodedata.normalize('NFKD', text.casefold()).translate(_LETTERS))
    return folded


def fold(text):
    return fold_all([text])[0]


def _gmail(email):
    local = email.rpartition('@')[0].replace('.', '')
    return f'{local}@gmail.com' if local else None


def email_keys(emails):
    """'Ada.Lovelace+crm@GoogleMail.com' -> 'adalovelace@gmail.com': case-folded, `+tag` removed, and for
    Gmail (either domain) the dots of the local part ignored. None when it is no address."""
    joined = _joined(emails)[1].casefold()
    if not joined.isascii() or any(space in joined for space in _ASCII_SPACES):
        joined = '\n'.join([line.strip() for line in joined.split('\n')])
    return [
        _gmail(e) if e.endswith(GMAIL) else e if '@' in e and e[0] != '@' and e[-1] != '@' else None
        for e in _PLUS_TAG.sub('', joined).split('\n')
    ]


def email_key(email):
    return email_keys([email])[0]


def phone_keys(phones):
    """'+44 (20) 7946-0000' and '0044 20 7946 0000' -> '442079460000': digits only, a leading 00 read as
    +. None below MIN_PHONE_DIGITS."""
    joined = _joined(phones)[1]
    digits = '\n' + (joined.translate(_ASCII_NOT_DIGIT) if joined.isascii() else _NOT_DIGIT.sub('', joined))
    # one leading 00 of each line
    return [d if len(d) >= MIN_PHONE_DIGITS else None for d in digits.replace('\n00', '\n')[1:].split('\n')]


def phone_key(phone):
    return phone_keys([phone])[0]


def host_key(value):
    """'https://www.Example.com:8443/about' -> 'example.com': no scheme, user, port, path or `www.`.
    None for a value without a dot or a host many companies share."""
    if not value:
        return None
    host = _SCHEME.sub('', value.strip().casefold(), count=1)
    host = _HOST_END.split(host, maxsplit=1)[0].rpartition('@')[2].split(':', 1)[0].strip('.')
    host = host.removeprefix('www.')
    if '.' not in host or host in SHARED_HOSTS:
        return None
    return host


def company_name_key(name):
    """'Acme Co., Ltd.' -> 'acme': folded words without the legal suffixes that end the name (one word
    is always kept, so a company named 'SA' is still 'sa')."""
    words = [w for w in map(fold, (name or '').split()) if w]
    while len(words) > 1 and words[-1] in LEGAL_SUFFIXES:
        words.pop()
    return ''.join(words) or None


def within_edits(a, b, limit=MAX_EDITS):
    """The Levenshtein distance of `a` and `b` when it is at most `limit`, else None.

    NOTE: only the cells within `limit` of the diagonal can hold a distance that small, so each row of
    the table computes those (a band), and stops as soon as a whole row is beyond the limit. Comparisons
    are spelt out rather than calls to min(): this is the inner loop of similar names.
    """
    if abs(len(a) - len(b)) > limit:
        return None
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end = 0
    while end < len(a) - start and end < len(b) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    a, b = a[start : len(a) - end], b[start : len(b) - end]
    if not a or not b:
        return max(len(a), len(b))
    beyond = limit + 1
    previous = [j if j <= limit else beyond for j in range(len(b) + 1)]
    for i, ca in enumerate(a, 1):
        current = [beyond] * (len(b) + 1)
        current[0] = best = i if i <= limit else beyond
        for j in range(max(1, i - limit), min(len(b), i + limit) + 1):
            cost = previous[j - 1] + (ca != b[j - 1])
            if previous[j] + 1 < cost:
                cost = previous[j] + 1
            if current[j - 1] + 1 < cost:
                cost = current[j - 1] + 1
            current[j] = cost
            if cost < best:
                best = cost
        if best > limit:
            return None
        previous = current
    return previous[-1] if previous[-1] <= limit else None


# -- matchers --------------------------------------------------------------------------------------


def all_pairs(members):
    return [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]


class Matcher:
    """How one resource's records are compared.

    `columns` are what a row holds after its id. `derive` turns a batch of those columns into normalised
    ones, by name; `blocks` are the (reason, derived column) whose keys records are filed under (None: not
    filed); `pairs` says which records of a block match. `reasons` are (reason, weight), in the order
    reasons are listed.

    NOTE: column by column, not record by record: list comprehensions over a batch cost a fraction of a
    function call per record, which is what an organization of 100,000 records needs to answer in time.
    """

    columns = ()
    reasons = ()
    blocks = ()

    def derive(self, columns):
        """A batch of rows' `columns` (one list each) -> {name: [normalised values]}."""
        raise NotImplementedError

    def pairs(self, reason, members, derived):
        """The matching pairs among `members` (record indexes), which share a key of `reason`.

        NOTE: a key shared by more than MAX_BLOCK records means nothing (see MAX_BLOCK)."""
        return all_pairs(members) if len(members) <= MAX_BLOCK else []


class ContactMatcher(Matcher):
    columns = ('first_name', 'last_name', 'email', 'phone', 'company_id')
    reasons = (('same email', 0.9), ('same phone', 0.8), ('same name', 0.7), ('similar name', 0.5))
    # NOTE: similar last names are looked for among the company's contacts with the same first initial whose
    # last names begin, or end, with the same letter: a typo at both ends is missed, a search stays small.
    blocks = (
        ('same email', 'email'),
        ('same phone', 'phone'),
        ('same name', 'name'),
        ('similar name', 'similar_start'),
        ('similar name', 'similar_end'),
    )

    def derive(self, columns):
        """The keys (email, phone, name, similar-name blocks), and what pairs compare (company, last name)."""
        first_names, last_names, emails, phones, companies = columns
        lasts = fold_all(last_names)
        # a name needs its last name
        firsts = [first if last else '' for first, last in zip(fold_all(first_names), lasts)]
        similar = [
            company and first and last and f'{company}\x1f{first[0]}'
            for company, first, last in zip(companies, firsts, lasts)
        ]
        return {
            'email': email_keys(emails),
            'phone': phone_keys(phones),
            'name': [f'{first}\x1f{last}' if last else None for first, last in zip(firsts, lasts)],
            'similar_start': [s and f'{s}<{last[0]}' or None for s, last in zip(similar, lasts)],
            'similar_end': [s and f'{s}>{last[-1]}' or None for s, last in zip(similar, lasts)],
            'company': list(companies),
            'last': lasts,
        }

    def pairs(self, reason, members, derived):
        if reason == 'same name':
            return self._same_name(members, derived['company'])
        if reason == 'similar name':
            return self._similar_name(members, derived['last'])
        return super().pairs(reason, members, derived)

    @staticmethod
    def _same_name(members, companies):
        """Same name, and the same company or no company on either side.

        NOTE: in a name too common to tell people apart (a block over MAX_BLOCK), only contacts of the
        same company still match: a contact without a company would match them all."""
        by_company = {}
        for m in members:
            by_company.setdefault(companies[m], []).append(m)
        loose = by_company.pop(None, [])
        pairs = [pair for group in by_company.values() if len(group) <= MAX_BLOCK for pair in all_pairs(group)]
        if len(members) <= MAX_BLOCK:
            pairs += all_pairs(loose) + [(a, b) for a in loose for group in by_company.values() for b in group]
        return pairs

    @staticmethod
    def _similar_name(members, lasts):
        """Last names 1 or 2 edits apart (the same company and first initial: the block's key).
        Each distinct pair of last names is compared once."""
        if len(members) > MAX_SIMILAR_BLOCK:
            return []
        by_last = {}
        for m in members:
            by_last.setdefault(lasts[m], []).append(m)
        names = list(by_last)
        return [
            (a, b)
            for i, x in enumerate(names)
            for y in names[i + 1 :]
            if within_edits(x, y)
            for a in by_last[x]
            for b in by_last[y]
        ]


class CompanyMatcher(Matcher):
    columns = ('name', 'domain', 'website')
    reasons = (('same domain', 0.9), ('same name', 0.7))
    blocks = (('same domain', 'domain'), ('same domain', 'website'), ('same name', 'name'))

    def derive(self, columns):
        """The hosts of domain and website (the website's when it is another one), the name's key."""
        names, domains, websites = columns
        domains = [host_key(d) for d in domains]
        return {
            'domain': domains,
            'website': [w if w != d else None for w, d in zip(map(host_key, websites), domains)],
            'name': [company_name_key(n) for n in names],
        }


MATCHERS = {'contacts': ContactMatcher(), 'companies': CompanyMatcher()}


# -- finding ---------------------------------------------------------------------------------------

BATCH = 5000
_paused = {'count': 0, 'by_us': False}
_pause_lock = threading.Lock()


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off while the organization's records are filed and grouped.

    NOTE: filing 100,000 records makes hundreds of thousands of short-lived tuples and lists, none in a
    cycle, and every 700 of them set off a collection that walks them (and, now and then, the whole heap):
    ~20 % of the CPU (bench/RESULTS.md, 2026-11-30). The collector is process-wide: the last of
    concurrent requests to finish turns it back on, and only if it was on before the first.
    """
    with _pause_lock:
        if _paused['count'] == 0:
            _paused['by_us'] = gc.isenabled()
            gc.disable()
        _paused['count'] += 1
    try:
        yield
    finally:
        with _pause_lock:
            _paused['count'] -= 1
            if _paused['count'] == 0 and _paused['by_us']:
                gc.enable()


@dataclass
class Found:
    """Records filed under their keys: `ids[i]`'s normalised values are `derived[name][i]`; `blocks` maps
    (reason, key) to the records filed under it, for the keys two records or more share."""

    matcher: Matcher
    ids: list
    derived: dict
    blocks: dict

    def keys_of(self, index):
        """The blocks record `index` is filed under."""
        keys = [(reason, self.derived[name][index]) for reason, name in self.matcher.blocks]
        return [key for key in dict.fromkeys(keys) if key in self.blocks]


def file(matcher, rows, extra=None):
    """File `rows` ((id, *matcher.columns)) under their keys; `extra`, a row of a record that is not among
    them (an unsaved one, or one that is archived), goes last."""
    ids, derived = [], {}
    rows = iter(rows if extra is None else itertools.chain(rows, [extra]))
    while batch := list(itertools.islice(rows, BATCH)):
        columns = list(zip(*batch))
        ids += columns[0]
        for name, values in matcher.derive(columns[1:]).items():
            derived.setdefault(name, []).extend(values)
    blocks, count = {}, len(ids)
    for reason in dict.fromkeys(reason for reason, _ in matcher.blocks):
        # the key columns of one reason are one key space (a company's domain meets another's website)
        keys = []
        for name in [name for r, name in matcher.blocks if r == reason]:
            keys += derived.get(name, [])
        # NOTE: counted first (at C speed): most keys belong to one record, and only shared ones make blocks.
        shared = {key for key, n in collections.Counter(keys).items() if n > 1}
        shared.discard(None)
        for i in [i for i, key in enumerate(keys) if key in shared] if shared else ():
            blocks.setdefault((reason, keys[i]), []).append(i % count)
    # a record is in a block once, whichever of its columns put it there
    blocks = {
        key: members for key, members in ((k, list(dict.fromkeys(m))) for k, m in blocks.items()) if len(members) > 1
    }
    return Found(matcher, ids, derived, blocks)


def _links(found, keys):
    """{(i, j): set of reasons} over the blocks `keys`, i < j."""
    links = {}
    for key in keys:
        reason = key[0]
        for a, b in found.matcher.pairs(reason, found.blocks[key], found.derived):
            pair = (a, b) if a < b else (b, a)
            reasons = links.get(pair)
            if reasons is None:
                links[pair] = {reason}
            else:
                reasons.add(reason)
    return links


def score(matcher, reasons):
    """1 - the product of (1 - weight): independent evidence adds up, and never reaches 1."""
    doubt = 1.0
    for reason, weight in matcher.reasons:
        if reason in reasons:
            doubt *= 1 - weight
    return 1 - doubt


def ordered(matcher, reasons):
    return [reason for reason, _ in matcher.reasons if reason in reasons]


def groups(found):
    """Every group of probable duplicates, best first: [{'ids', 'score', 'reasons'}].

    Groups are the connected records (union-find over the pairs); ids sort oldest first. Ties of score
    sort by the first id, so pages are stable."""
    links = _links(found, found.blocks)
    parent = {}

    def root(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best = {}
    for (a, b), reasons in links.items():
        s = score(found.matcher, reasons)
        best[a], best[b] = max(best.get(a, 0), s), max(best.get(b, 0), s)
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members, reasons_of = {}, {}
    for i in best:
        members.setdefault(root(i), []).append(i)
    for (a, _), reasons in links.items():
        reasons_of.setdefault(root(a), set()).update(reasons)
    out = [
        (-min(best[i] for i in indexes), sorted(found.ids[i] for i in indexes), reasons_of[r])
        for r, indexes in members.items()
    ]
    out.sort(key=lambda g: (g[0], g[1][0]))
    return [
        {'ids': ids, 'score': round(-neg, 2), 'reasons': ordered(found.matcher, reasons)} for neg, ids, reasons in out
    ]


def candidates(found, index):
    """The probable duplicates of record `index`, best first: [(id, score, reasons)].

    NOTE: the blocks of `index` are paired with their whole membership, so a record's candidates are
    exactly its pairs in the organization-wide list (block limits included)."""
    out = []
    for (a, b), reasons in _links(found, found.keys_of(index)).items():
        if index in (a, b):
            other = b if a == index else a
            out.append((found.ids[other], score(found.matcher, reasons), ordered(found.matcher, reasons)))
    out.sort(key=lambda c: (-c[1], c[0]))
    return [(record_id, round(s, 2), reasons) for record_id, s, reasons in out]
