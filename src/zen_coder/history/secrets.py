"""Replace credentials and email addresses with placeholders before code becomes training data.

`redact` runs on every version of every file in whole git histories, and nearly none of them hold
a secret, so the work is split in two:

1. Hints: eight scans of the text (two of it as it is, six of a lower-cased copy, for names in
   any case) for what every secret contains: `AKIA`, `ghp_`, `sk-`, a secret word such as
   `password` followed by `=` or `:`, ... Each scan costs a few microseconds, because `re` jumps
   from one occurrence of a pattern's first character to the next, and only if that character is
   uncommon in code; so hints start at one (`J(?<=eyJ)`, not `eyJ`: `e` is everywhere) and check
   the characters before it with a lookbehind. Hints that share a first character share a scan.
2. The exact patterns run only where a hint matched, anchored there, so their work is bounded by
   the length of a secret rather than of the text or the line. A typical file has no hint at all,
   and nothing past the scans runs.

URLs with a password and email addresses need an `@`, which `str.__contains__` finds at memchr
speed, so texts without one skip them.

Every finder works within one line (only a private key block spans lines), so a new version of a
file needs only its changed lines searched; the others are redacted as in the version before it:
`redact_edit`.

Where a value is ambiguous the patterns redact: a fake password in a test fixture is removed like
a real one, because a leaked secret can't be taken back out of a published model.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator

from zen_coder.history.edits import differing_lines

PLACEHOLDERS: dict[str, str] = {
    "private_key": "<PRIVATE_KEY>",
    "key": "<KEY>",
    "password": "<PASSWORD>",
    "email": "<EMAIL>",
}

# A span of the text to replace: start, end and the kind of secret it holds.
_Span = tuple[int, int, str]
_KIND_ORDER = {kind: order for order, kind in enumerate(PLACEHOLDERS)}

# The rest of a name after a secret word, then an assignment operator: `_PASSWORD=`, `Token":`.
# Bounded, so that a hint in a long run of base64 costs no more than one in a short name.
_NAME_END = r"[\w.-]{0,64}+[\\\"'\]]{0,3}+[ \t]*+[:=]"
# Hints in the text as it is, for case-sensitive token prefixes.
_HINTS = tuple(
    re.compile(pattern)
    for pattern in (
        r"A(?:KIA|SIA|BIA|CCA|Iza)",  # AWS key id, Google API key
        r"J(?<=eyJ)",  # JSON Web Token
    )
)
# Hints in the lower-cased text: secret words in names, and tokens with lower-case prefixes (with
# the start of their payload, so that `npm_version` is no hint).
_LOWERED_HINTS = tuple(
    re.compile(pattern)
    for pattern in (
        # Names with token, api key or private key; "private key" of a PEM block; Stripe's
        # sk_live_, sk_test_ and rk_live_; OpenAI's and Anthropic's sk-.
        rf"k(?:en(?<=token){_NAME_END}"
        rf"|ey(?:(?:(?<=apikey)|(?<=api[_.-]key)|(?<=privatekey)|(?<=private[_.-]key)){_NAME_END}"
        r"|(?<=private key))"
        r"|_(?:(?<=[rs]k_)live|(?<=sk_)test)_[a-z0-9]{16}|-(?<=sk-)[\w-]{20})",
        # Names with pass or pwd; npm and PyPI tokens.
        rf"p(?:(?:ass|wd){_NAME_END}|m_(?<=npm_)[a-z0-9]{{36}}|ypi-ageichlwas5vcmc)",
        rf"cret(?<=secret){_NAME_END}",  # names with secret
        # GitHub, GitLab, SendGrid.
        r"g(?:h[pousr]_[a-z0-9]{36}|ithub_pat_\w{22}|lpat-[\w-]{20}|\.(?<=sg\.)[\w-]{22}\.)",
        r"xox[abposr]-[a-z0-9-]{10}",  # Slack
        r"hf_[a-z0-9]{30}",  # Hugging Face
    )
)
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

_PRIVATE_KEY_BEGIN = re.compile(
    r"-----BEGIN (?P<label>(?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP) )?PRIVATE KEY(?: BLOCK)?)-----"
)
# The rest of a key whose END line is missing (the file was cut): armor headers such as
# `Proc-Type: 4,ENCRYPTED` and the blank lines after them, then the body up to the next blank line.
_TRUNCATED_KEY_REST = re.compile(
    r"(?:\n[ \t]*[\w-]+: [^\n]*|\n[ \t\r]*)*"  # armor headers and blank lines
    r".*?(?=\n[ \t\r]*\n|\Z)",  # the body
    re.S,
)

_TOKEN = re.compile(
    r"""(?<![A-Za-z0-9])(?:
        A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}(?![A-Z0-9])    # AWS access key id
        | AIza[\w-]{35}(?![\w-])                        # Google API key
        | gh[pousr]_[A-Za-z0-9]{36,} | github_pat_\w{22,}
        | glpat-[\w-]{20,}                              # GitLab
        | xox[abposr]-[A-Za-z0-9-]{10,}                 # Slack
        | (?:sk|rk)_live_[A-Za-z0-9]{16,} | sk_test_[A-Za-z0-9]{16,}  # Stripe
        | sk-[\w-]{20,}                                 # OpenAI (sk-proj-), Anthropic (sk-ant-)
        | hf_[A-Za-z0-9]{30,}                           # Hugging Face
        | npm_[A-Za-z0-9]{36}(?![A-Za-z0-9])
        | pypi-AgEIcHlwaS5vcmc[\w-]{50,}
        | SG\.[\w-]{22}\.[\w-]{43}(?![\w-])             # SendGrid
        | eyJ[\w-]++\.eyJ[\w-]++\.[\w-]*                # JSON Web Token
    )""",
    re.X | re.ASCII,
)

# The patterns below match from the start of a name, bounded in length so that one in a long run
# of base64 stops early. AWS's secret access key, in any assignment including the unquoted
# `key = value` of ~/.aws/credentials, assigned to a name with both "aws" and "secret" in it:
_AWS_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>[\w.-]{1,128}+)[\\\"']*+[ \t]*[:=][ \t]*[\\\"']?"
    r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)
_AWS_SECRET_NAME = re.compile(r"aws.*secret|secret.*aws", re.I)
# The part of a name up to the end of the searched range, to find where a name starts.
_NAME_UP_TO = re.compile(r"[\w.-]*+$")
# `name = "value"`, `name: 'value'`, `"name": "value"`, `name: str = "value"`, `name := "value"`,
# `name => "value"`, and the same inside an escaped JSON string (`\"name\": \"value\"`).
_QUOTED_ASSIGNMENT = re.compile(
    r"""(?P<name>[\w.-]{1,128}+)[\\"'\]]*+
        (?:[ \t]*:[ \t]*[\w.\[\]| ]*?[\w\]])?    # a type annotation
        [ \t]*(?::=|=>|[:=])[ \t]*
        \\?(?P<quote>["'`])(?P<value>.*?)\\?(?P=quote)""",
    re.X,
)
# A whole line `NAME=value` (.env, shell) or `name: value` (YAML), the value unquoted.
_UNQUOTED_ASSIGNMENT = re.compile(
    r"[ \t]*(?:export[ \t]+|-[ \t]+)?(?P<name>[A-Za-z_][\w.-]*)(?:=|:[ \t]+)"
    r"(?P<value>[^\s\"'`]\S*)[ \t\r]*(?:[ \t]#.*)?$"
)
# Secret words as they must appear in a name: `pass`, `pwd` and `token` as the end of a word
# (`db_pass`, `accessToken`, but not `bypass`, `passes`, `tokenizer`), the others anywhere.
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|secret|(?<![a-z])(?:pass|pwd)(?![a-z])|token(?![a-z])"
    r"|(?:api|private)[_.-]?key(?![a-z])"
)
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
# Values that refer to a secret instead of holding one: ${DB_PASSWORD}, $DB_PASSWORD,
# {{ secret }}, {% ... %}, %(password)s, {password}, <your-token>.
_REFERENCE = re.compile(r"\$\{|\{\{|\{%|%\(|^\$\w|^<[^<>]*>$|^\{\w*\}$")
# Unquoted values that are code: calls, indexing, literals, YAML anchors and block scalars,
# attribute access (`request.token`), and camel-case words without digits (`SecretStr`,
# `accessToken`), which are type and variable names far more often than passwords.
_EXPRESSION = re.compile(
    r"[()\[\]{},;]|^[&*!|>]|^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$|^[A-Za-z][a-z]+(?:[A-Z][a-z]+)+$"
)

_URL_PASSWORD = re.compile(r"://[^\s:/@]*:(?P<password>[^\s/@]+)@")

_EMAIL_DOMAIN = re.compile(
    r"@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})(?![A-Za-z0-9-])"
)
_EMAIL_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "._%+-")
# `icon@2x.png`, `logo@1.5x.webp`: image variants for high-density screens, not addresses.
_PIXEL_DENSITY = re.compile(r"[0-9.]+x\.")


def redact(text: str, *, secrets: bool = True, emails: bool = True) -> tuple[str, dict[str, int]]:
    """Return the text with credentials and email addresses replaced by placeholders, and the
    number of replacements by kind (only kinds with a count > 0).

    Finders run one after another on the text the previous one left, so a later one sees
    placeholders where an earlier one found something: `user:pw@host` is a URL password, not an
    address. Redacting twice changes nothing.
    """
    finders: list[Callable[[str], Iterator[_Span]]] = []
    if secrets:
        finders += [_hinted_secrets, _url_passwords]
    if emails:
        finders.append(_emails)
    counts: dict[str, int] = {}
    for find in finders:
        spans = list(find(text))
        if spans:
            text = _replace(text, spans, counts)
    return text, counts


def redact_edit(
    old: str,
    new: str,
    old_redacted: tuple[str, dict[str, int]] | None = None,
    *,
    secrets: bool = True,
    emails: bool = True,
) -> tuple[str, dict[str, int]]:
    """`redact(new)`, found in the lines that differ from `old`, given `old_redacted`, what
    `redact(old)` returned (by default: `old` itself, nothing replaced).

    Each finder's matches lie within one line and depend on that line alone, so the lines `new`
    shares with `old` are redacted as they were in `old`: they are taken from `old_redacted`, and
    so are their counts. Two things reach across lines, and send the whole text through `redact`:
    a private key block, which runs to its END line, and the choice of how to lower-case a text
    for the hints, which a non-ASCII character can change (see `_hinted_lines`).
    """
    flags = {"secrets": secrets, "emails": emails}
    old_text, old_counts = old_redacted if old_redacted is not None else (old, {})
    start, old_end, new_end = differing_lines(old, new)
    if "private_key" in old_counts or not (
        old[start:old_end].isascii() and new[start:new_end].isascii()
    ):
        return redact(new, **flags)
    changed, counts = redact(new[start:new_end], **flags)
    if "private_key" in counts:
        return redact(new, **flags)
    if not old_counts:
        return (new, counts) if not counts else (new[:start] + changed + new[new_end:], counts)
    old_changed, old_changed_counts = redact(old[start:old_end], **flags)
    head_end = _line_start(old_text, old.count("\n", 0, start), start)
    tail_start = head_end + len(old_changed)
    if not old_text.startswith(old_changed, head_end):
        return redact(new, **flags)  # not line by line after all: never seen, but never wrong
    total = dict(old_counts)
    for kind, count in old_changed_counts.items():
        total[kind] -= count
    for kind, count in counts.items():
        total[kind] = total.get(kind, 0) + count
    kept = {kind: count for kind, count in total.items() if count}
    return old_text[:head_end] + changed + old_text[tail_start:], kept


def _line_start(text: str, lines: int, guess: int) -> int:
    """Where the line after the first `lines` lines of `text` starts; `guess` is tried first."""
    if lines == 0:
        return 0
    if 0 < guess <= len(text) and text[guess - 1] == "\n" and text.count("\n", 0, guess) == lines:
        return guess
    low, high = 0, len(text)  # the shortest beginning with `lines` newlines
    while low < high:
        middle = (low + high) // 2
        if text.count("\n", 0, middle) >= lines:
            high = middle
        else:
            low = middle + 1
    return low


def _replace(text: str, spans: list[_Span], counts: dict[str, int]) -> str:
    """Put placeholders over the spans. Overlapping spans merge into one, of the kind of the span
    that starts first, or of the narrowest kind (in the order of PLACEHOLDERS) among those that
    start together: a private key quoted as a password's value stays a private key."""
    merged: list[_Span] = []
    for start, end, kind in sorted(spans, key=lambda span: (span[0], _KIND_ORDER[span[2]])):
        if merged and start < merged[-1][1]:
            first_start, first_end, first_kind = merged[-1]
            merged[-1] = (first_start, max(first_end, end), first_kind)
        else:
            merged.append((start, end, kind))
    parts = []
    done = 0
    for start, end, kind in merged:
        parts += (text[done:start], PLACEHOLDERS[kind])
        counts[kind] = counts.get(kind, 0) + 1
        done = end
    parts.append(text[done:])
    return "".join(parts)


def _hinted_secrets(text: str) -> Iterator[_Span]:
    """Private keys, tokens and secrets assigned to secret-looking names, each looked for where
    one of its hints matched."""
    for line_start, line_end, hits in _hinted_lines(text):
        bare = _UNQUOTED_ASSIGNMENT.match(text, line_start, line_end)
        if (
            bare
            and _is_secret(bare["name"], bare["value"], min_length=8)
            and not _EXPRESSION.search(bare["value"])
        ):
            yield *bare.span("value"), "password"
        for hit in hits:
            yield from _secrets_at(text, hit, line_start, line_end)


def _secrets_at(text: str, hit: int, line_start: int, line_end: int) -> Iterator[_Span]:
    """The secrets that the hint at `hit`, on the line from `line_start` to `line_end`, may mark."""
    # "private key" ends the BEGIN line of a PEM block.
    begin = _PRIVATE_KEY_BEGIN.search(text, max(line_start, hit - 40), min(line_end, hit + 16))
    if begin:
        yield begin.start(), _private_key_end(text, begin), "private_key"
    # A token's hint starts at most two characters into it (`J` of `eyJ`).
    for start in range(max(line_start, hit - 2), hit + 1):
        token = _TOKEN.match(text, start, line_end)
        if token:
            yield *token.span(), "key"
    # A secret word's hint is inside the name that the secret is assigned to.
    name_start = _NAME_UP_TO.search(text, max(line_start, hit - 64), hit).start()
    aws_secret = _AWS_SECRET_ASSIGNMENT.match(text, name_start, line_end)
    if aws_secret and _AWS_SECRET_NAME.search(aws_secret["name"]):
        yield *aws_secret.span("value"), "key"
    quoted = _QUOTED_ASSIGNMENT.match(text, name_start, line_end)
    if quoted and _is_secret(quoted["name"], quoted["value"], min_length=6):
        yield *quoted.span("value"), "password"


def _hinted_lines(text: str) -> list[tuple[int, int, list[int]]]:
    """Each line where hints match: its start, its end, and where in it they match."""
    lowered = text.lower()
    if len(lowered) != len(text):  # "İ" lower-cases to two characters; keep offsets aligned
        lowered = text.translate(_ASCII_LOWER)
    hits = sorted(
        {
            match.start()
            for hints, scanned in ((_HINTS, text), (_LOWERED_HINTS, lowered))
            for hint in hints
            for match in hint.finditer(scanned)
        }
    )
    lines: list[tuple[int, int, list[int]]] = []
    for hit in hits:
        if lines and hit < lines[-1][1]:
            lines[-1][2].append(hit)
            continue
        end = text.find("\n", hit)
        lines.append((text.rfind("\n", 0, hit) + 1, len(text) if end < 0 else end, [hit]))
    return lines


def _private_key_end(text: str, begin: re.Match[str]) -> int:
    end_line = f"-----END {begin['label']}-----"
    end = text.find(end_line, begin.end())
    if end < 0:
        return _TRUNCATED_KEY_REST.match(text, begin.end()).end()
    return end + len(end_line)


def _is_secret(name: str, value: str, *, min_length: int) -> bool:
    """Whether `value`, assigned to `name`, is a secret to redact."""
    return (
        len(value) >= min_length
        and _SECRET_NAME.search(_CAMEL_HUMP.sub("_", name).lower()) is not None
        and not _is_reference(value)
    )


def _is_reference(value: str) -> bool:
    """Whether the value names a secret kept elsewhere, or was redacted already."""
    return _REFERENCE.search(value) is not None or any(p in value for p in PLACEHOLDERS.values())


def _url_passwords(text: str) -> Iterator[_Span]:
    if "@" not in text:
        return
    for match in _URL_PASSWORD.finditer(text):
        if not _is_reference(match["password"]):
            yield *match.span("password"), "password"


def _emails(text: str) -> Iterator[_Span]:
    if "@" not in text:
        return
    done = 0
    for match in _EMAIL_DOMAIN.finditer(text):
        # The match starts at the "@" (a cheap literal scan); the local part is read backwards.
        at = start = match.start()
        while start > done and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        if start < at and not _PIXEL_DENSITY.match(match["domain"]):
            yield start, match.end(), "email"
            done = match.end()
