"""Personal data and secrets in kept records: e-mail addresses, phone numbers, IP addresses, card
numbers and access keys, each redacted to a placeholder, rejected (`personal_data`) or kept, as
`PersonalDataConfig` says per type. It is the last filter of every modality, so a placeholder never
changes what another filter decides: the entropy is that of the text as it landed, and Tree-sitter
parses the code as it landed (a placeholder inside a string or comment would parse too, but one in
place of a bare token would not). A redacted record carries its counts by type in `redactions`.

What counts, and what does not (tests/training/test_pii.py holds the table):
- e-mail: local@domain.tld; not `icon@2x.png` (a file name), not `@decorator`, not `pkg@1.2.3`.
- phone: the forms phone numbers are written in: +<country> ..., (415) 555-0132, 415-555-0132,
  030 1234567, 01 23 45 67 89, with 8-15 digits. A bare run of digits (an id, an ISBN, a
  timestamp) and dates (2024-01-15, 15.01.2024) are not phone numbers.
- ip: a dotted quad that is a valid IPv4 address (each part <= 255, no leading zeros), in prose or
  code alike: "1.2.3.4" names a host whether or not it reads like a version, so it is redacted unless
  a version cue precedes it (v1.2.3.4, version 1.2.3.4, ==1.2.3.4, pkg@1.2.3.4, name-1.2.3.4). More
  than four parts (an SNMP OID, 4.0.30319.42000) is not an address. IPv6 with at least three groups
  (so not a Python slice `x[1::2]` or `a::b`). Addresses that cannot name a host stay: loopback,
  0.0.0.0 and ::, multicast, link-local, 240/4 (255.255.255.255 and netmasks) and the ranges set
  aside for documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), which
  Python's own ipaddress documentation is full of.
- card: 13-19 digits, plain or in groups of 4 (Amex 4-6-5) with one separator, with a card
  network's prefix and length (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay) and a valid
  Luhn checksum: 2.7% of random 16-digit runs pass all three; a git SHA or a hex hash has letters
  around its digits, so never.
- secret: AWS access key ids (AKIA/ASIA + 16), GitHub tokens (ghp_/gho_/ghu_/ghs_/ghr_,
  github_pat_), Slack tokens (xoxb-/xoxa-/xoxp-/xoxr-/xoxs-), private-key PEM blocks (to the END
  line, or the end of the record), and the value of an assignment whose name says key, secret,
  password, token or credential (`api_key = "..."`, `PASSWORD=...`, `"token": "..."`) when it is a
  literal at least `min_secret_chars` long: the name and quotes stay, `api_key = "<|secret|>"`, so
  the code still reads (and parses). A value that is an identifier (`settings.API_KEY`), a
  template (`${TOKEN}`, `<your key>`) or one repeated character is not a secret.

A record rejected here (or by an earlier filter) goes to rejected/ as it landed, like every
rejected record; only kept records are rewritten.

Speed: a chunk's records are searched as one UTF-8 byte string (`find_all`), with patterns that
start with a literal, which `re` skips to at memchr speed; the digit-based types share one scan for
runs of digits (on a translated copy where every digit is "0"). About 11 us per 1 KB record on one
core with every type on (73K records/s on the benchmark corpus, 94K on prose).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import itertools
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from training.config import PersonalDataConfig
from training.data.filters.base import Filter, Verdict
from training.data.records import REDACTED_TYPES, Record, Reject

TYPES = REDACTED_TYPES
PLACEHOLDER = {t: f"<|{t}|>" for t in TYPES}

Span = tuple[int, int, str]  # start, end, type
_W = rb"\w\x80-\xff"  # word bytes at a boundary: ASCII letters, digits, _ and any byte of a non-ASCII character

# --- e-mail ---------------------------------------------------------------------------------------

_FILE_EXTENSION = rb"(?:png|jpe?g|gif|svg|webp|ico|css|js|mjs|ts|json|txt|html?|pdf)\b"  # icon@2x.png, not a domain
_EMAIL_DOMAIN = re.compile(
    rb"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?!" + _FILE_EXTENSION + rb")[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9])"
)
# The local part, read backwards from "@": ASCII, or two-byte UTF-8 characters (Latin, Greek, Cyrillic
# letters: jürgen@), reversed; a CJK character (three bytes) ends it, as a space would.
_LOCAL_REVERSED = re.compile(rb"(?:[A-Za-z0-9_%+-]|[\x80-\xbf][\xc2-\xdf])(?:[A-Za-z0-9._%+-]|[\x80-\xbf][\xc2-\xdf]){0,63}")


def _emails(data: bytes) -> Iterator[Span]:
    for m in _EMAIL_DOMAIN.finditer(data):
        at = m.start()
        local = _LOCAL_REVERSED.match(data[max(0, at - 128) : at][::-1])
        if local is None:
            continue  # nothing before "@": a decorator, an npm scope
        yield at - len(local.group().rstrip(b".")), m.end(), "email"  # a local part does not start with a dot


# --- digits: phone numbers, IPv4 addresses, card numbers ------------------------------------------

# Digits, "+" and "(" as "0"; the separators phone numbers, addresses and card numbers are written
# with as "."; anything else as "x". Runs of at least 7 are found with a search for the literal "0",
# which `re` does at memchr speed; the precise patterns below only look inside them.
_RUN_MAP = bytes(48 if chr(b) in "0123456789+(" else 46 if chr(b) in " .-/)" else 120 for b in range(256))
_RUN = re.compile(rb"0[0.]{5,}0")

_PHONE = re.compile(
    rb"""(?<![\w+.\-/\x80-\xff])(?:
        \+[1-9][0-9]{0,2}[ .-]?(?:\(0\)[ .-]?)?(?:\([0-9]{1,4}\)|[0-9]{1,4})(?:[ .-]?[0-9]{2,4}){1,4}  # +1 415 555 0132, +44 (0)20 7946 0958
        |\([0-9]{2,5}\)[ .-]?[1-9][0-9]{2,3}[ .-]?[0-9]{3,4}                                           # (415) 555-0132, (030) 1234 5678
        |[2-9][0-9]{2}([.-])[1-9][0-9]{2}\1[0-9]{4}                                                     # 415-555-0132, 415.555.0132
        |0[1-9][0-9]{0,3}[ /-][1-9][0-9]{2,7}                                                           # 030 1234567, 0171-2345678
        |0[1-9](?:[ .][0-9]{2}){4}                                                                      # 01 23 45 67 89
    )(?![\w\x80-\xff-]|\.?[0-9])""",
    re.VERBOSE,
)
_IPV4 = re.compile(rb"(?<![" + _W + rb".])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![" + _W + rb"]|\.[0-9])")
_CARD = re.compile(
    rb"(?<![" + _W + rb".+-])(?:[0-9]{4}([ -]?)[0-9]{4}\1[0-9]{4}\1[0-9]{1,4}(?:\1[0-9]{1,3})?|[0-9]{4}([ -]?)[0-9]{6}\2[0-9]{4,5})(?![" + _W + rb"-]|\.[0-9])"
)
_VERSION_CUE = re.compile(rb"(?:\b(?:v|ver|version|release|rev)\.?\s?|[=~<>!]=\s?|[@-])$", re.IGNORECASE)
# (prefix, lengths) of the card networks: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay.
_CARD_NETWORKS = re.compile(r"4|5[1-5]|2(?:2[2-9]|[3-6]\d|7[01]|720)|3[47]|6(?:011|4[4-9]|5)|35(?:2[89]|[3-8]\d)|3(?:0[0-5]|[689])|62")
_CARD_LENGTHS = {
    "4": (13, 16, 19), "5": (16,), "2": (16,), "34": (15,), "37": (15,),
    "6": tuple(range(16, 20)), "35": tuple(range(16, 20)), "3": tuple(range(14, 20)),
}
_DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def is_card_number(number: str) -> bool:
    """A known network's prefix and length, and a valid Luhn checksum."""
    digits = number.replace(" ", "").replace("-", "")
    network = _CARD_NETWORKS.match(digits)
    if network is None:
        return False
    prefix = network.group()
    lengths = _CARD_LENGTHS.get(prefix[:2]) or _CARD_LENGTHS[prefix[0]]
    return len(digits) in lengths and _luhn(digits)


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address can name a real host: not loopback, unspecified, multicast, link-local,
    reserved, nor in the ranges set aside for documentation (RFC 5737, RFC 3849)."""
    special = address.is_loopback or address.is_unspecified or address.is_multicast or address.is_link_local or address.is_reserved
    return not special and not any(address in n for n in _DOCUMENTATION if n.version == address.version)


def _is_ipv4(data: bytes, m: re.Match) -> bool:
    try:
        address = ipaddress.IPv4Address(m.group().decode())
    except ValueError:
        return False
    return _host(address) and not _VERSION_CUE.search(data[max(0, m.start() - 10) : m.start()])


def _phone_digits(number: bytes) -> bool:
    """8-15 digits (E.164's most); 10 or more when written without separators, so that a signed
    number (+35236450) is not a phone."""
    digits = sum(48 <= c <= 57 for c in number)
    return 8 <= digits <= 15 and (digits >= 10 or digits + 1 < len(number))


def _digit_runs(data: bytes, kinds: frozenset[str]) -> Iterator[Span]:
    for run in _RUN.finditer(data.translate(_RUN_MAP)):
        start, end = run.start(), run.end() + 2  # the patterns' lookahead sees two bytes past the run
        if "ip" in kinds:
            yield from ((m.start(), m.end(), "ip") for m in _IPV4.finditer(data, start, end) if _is_ipv4(data, m))
        if "card" in kinds:
            yield from ((m.start(), m.end(), "card") for m in _CARD.finditer(data, start, end) if is_card_number(m.group().decode()))
        if "phone" in kinds:
            for m in _PHONE.finditer(data, start, end):
                if _phone_digits(m.group()):
                    yield m.start(), m.end(), "phone"


# --- IPv6 -----------------------------------------------------------------------------------------

_V6 = re.compile(rb":(?=[0-9A-Fa-f:.]*[0-9])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*")
"""An IPv6 address from its first colon on (every text form has two colons with at most one group
between them), where a digit follows; the group before the first colon is added after."""
_V6_GROUP_REVERSED = re.compile(rb"[0-9A-Fa-f]{0,4}")
_V6_BEFORE, _V6_AFTER = re.compile(rb"[" + _W + rb":.]"), re.compile(rb"[" + _W + rb":]")


def _ipv6(data: bytes) -> Iterator[Span]:
    for m in _V6.finditer(data):
        start = m.start() - _V6_GROUP_REVERSED.match(data[max(0, m.start() - 5) : m.start()][::-1]).end()  # type: ignore[union-attr]
        end = m.end() - (len(m.group()) - len(m.group().rstrip(b".")))  # a full stop after the address
        if (start and _V6_BEFORE.match(data, start - 1)) or _V6_AFTER.match(data, end):
            continue
        token = data[start:end].decode()
        if sum(1 for g in token.split(":") if g) < 3:
            continue  # x[1::2], a::b, fe80::1: a slice, a path, link-local
        try:
            address = ipaddress.IPv6Address(token)
        except ValueError:
            continue
        if _host(address):
            yield start, end, "ip"


# --- secrets --------------------------------------------------------------------------------------

# Each starts with a literal, which `re` finds at memchr speed.
_TOKENS = [
    re.compile(rb"A(?<![A-Za-z0-9]A)[KS]IA[0-9A-Z]{16}(?![0-9A-Za-z])"),  # AWS access key id
    re.compile(rb"g(?<![A-Za-z0-9]g)(?:h[pousr]_[A-Za-z0-9]{36,255}|ithub_pat_[A-Za-z0-9_]{22,255})(?![0-9A-Za-z_])"),  # GitHub
    re.compile(rb"xox(?<![A-Za-z0-9]xox)[baprs]-[A-Za-z0-9-]{10,255}(?![0-9A-Za-z-])"),  # Slack
]
_PEM = re.compile(rb"-----BEGIN[A-Z ]{0,30} PRIVATE KEY-----[^\0]*?(?:-----END[A-Z ]{0,30} PRIVATE KEY-----|(?=\0)|\Z)")
_SECRET_NAME = re.compile(rb"(?:api_?key|apikey|access_?key|private_?key|secret|passw(?:or)?d|passwd|pwd|token|credential)s?$")
_NAME_REVERSED = re.compile(rb"[ \t]{0,3}[\"']?([\w.-]{1,64})")  # the name before an operator, read backwards
_IDENTIFIER = re.compile(rb"[A-Za-z_]+(?:\.[A-Za-z_]+)*")  # settings.API_KEY: code, not a literal
_TEMPLATE = re.compile(rb"[$<{%]|(.)\1*$")  # ${X}, <your key>, {{x}}, %(x)s; or one repeated character


@functools.cache
def _assignments(min_chars: int) -> tuple[re.Pattern, ...]:
    """An operator (= := => == or :) and a literal after it: quoted (group 2) or bare (group 3).
    One pattern per operator's first byte, so each starts with a literal."""
    value = rb"""[ \t]{0,3}(?:(["'`])([^"'`\s\0]{%d,512})\1|([^\s\0"'`,;()\[\]{}]{%d,512}))""" % (min_chars, min_chars)
    return re.compile(rb"=[=>]?" + value), re.compile(rb":=?" + value)


def _assigned_secrets(data: bytes, min_chars: int) -> Iterator[Span]:
    for pattern in _assignments(min_chars):
        for m in pattern.finditer(data):
            name = _NAME_REVERSED.match(data[max(0, m.start() - 72) : m.start()][::-1])
            if name is None or not _SECRET_NAME.search(name.group(1)[::-1].lower().replace(b"-", b"_")):
                continue
            quoted = m.group(2) is not None
            group = 2 if quoted else 3
            value = m.group(group)
            if _TEMPLATE.match(value) or (not quoted and _IDENTIFIER.fullmatch(value)):
                continue
            yield m.start(group), m.end(group), "secret"


def _secrets(data: bytes, min_chars: int) -> Iterator[Span]:
    for pattern in _TOKENS:
        yield from ((m.start(), m.end(), "secret") for m in pattern.finditer(data))
    if b"-----BEGIN" in data:
        yield from ((m.start(), m.end(), "secret") for m in _PEM.finditer(data))
    yield from _assigned_secrets(data, min_chars)


# --- all types ------------------------------------------------------------------------------------

_SEPARATOR = b"\0"
"""Between the records of a chunk, which is searched as one byte string: no pattern matches a NUL,
so no match crosses from one record into the next."""


def _spans(data: bytes, kinds: frozenset[str], min_secret_chars: int) -> list[Span]:
    """Byte spans of personal data, non-overlapping, in order; where two overlap, the one that
    starts first (or is longer) wins."""
    spans: list[Span] = []
    if "email" in kinds and b"@" in data:
        spans += _emails(data)
    if kinds & {"phone", "ip", "card"}:
        spans += _digit_runs(data, kinds)
    if "ip" in kinds and b":" in data:
        spans += _ipv6(data)
    if "secret" in kinds:
        spans += _secrets(data, min_secret_chars)
    spans.sort(key=lambda s: (s[0], -s[1]))
    kept: list[Span] = []
    for span in spans:
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


def find_all(texts: Sequence[str], kinds: frozenset[str] = frozenset(TYPES), min_secret_chars: int = 12) -> list[list[Span]]:
    """The personal data of each text: spans in character offsets, in order.

    The texts are searched as one UTF-8 byte string: every type is ASCII, and one pass of a pattern
    over a chunk costs a fraction of a pass per record (measured: 0.4-0.7 us per 1 KB record against
    1.7-5 us, most of it the call); searched record by record, the filter took 27 us a record, not 14."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    starts = list(itertools.accumulate((len(e) + len(_SEPARATOR) for e in encoded), initial=0))
    found: list[list[Span]] = [[] for _ in texts]
    for a, b, kind in _spans(_SEPARATOR.join(encoded), kinds, min_secret_chars):
        i = bisect.bisect_right(starts, a) - 1
        found[i].append((a - starts[i], b - starts[i], kind))
    for i, spans in enumerate(found):
        if spans and len(encoded[i]) != len(texts[i]):  # to character offsets; matches are ASCII, so whole characters
            chars = functools.partial(_chars, encoded[i])
            found[i] = [(chars(a), chars(b), kind) for a, b, kind in spans]
    return found


def _chars(data: bytes, offset: int) -> int:
    return len(data[:offset].decode("utf-8", "surrogatepass"))


def find_personal_data(text: str, kinds: frozenset[str] = frozenset(TYPES), min_secret_chars: int = 12) -> list[Span]:
    return find_all([text], kinds, min_secret_chars)[0]


def redact(text: str, spans: list[Span]) -> str:
    parts, at = [], 0
    for start, end, kind in spans:
        parts += [text[at:start], PLACEHOLDER[kind]]
        at = end
    return "".join(parts) + text[at:]


class PersonalData(Filter):
    """Redacts, rejects or keeps personal data by type (`PersonalDataConfig`)."""

    name = "personal_data"

    def __init__(self, cfg: PersonalDataConfig):
        actions = cfg.actions()
        self.kinds = frozenset(t for t, a in actions.items() if a != "keep")
        self.rejecting = frozenset(t for t, a in actions.items() if a == "reject")
        self.min_secret_chars = cfg.min_secret_chars

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        found = find_all([r.text or "" for r in records], self.kinds, self.min_secret_chars)
        return [self._apply(r, spans) for r, spans in zip(records, found)]

    def check(self, record: Record) -> Verdict:
        return self([record])[0]

    def _apply(self, record: Record, spans: list[Span]) -> Verdict:
        if not spans:
            return None
        counts = Counter(kind for _, _, kind in spans)
        if found := [t for t in TYPES if counts[t] and t in self.rejecting]:
            return Reject("personal_data", ", ".join(f"{t} ({counts[t]})" for t in found))
        record.text = redact(record.text or "", spans)
        record.redactions = {t: counts[t] for t in TYPES}
        return None
