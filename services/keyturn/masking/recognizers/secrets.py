"""``SECRET``: credentials with no format of their own, found by place or by randomness.

Unlike the tokens of :mod:`.tokens`, a password or a generated key has no prefix to match,
so two other signs are used: where it stands (the password part of a URL, matched by a
pattern here; the value assigned to a ``password``/``secret``/``api_key``-like name, found
by detect-secrets' keyword plugin and the field-name rule, or written after such a name and a
space when it looks generated) and how random it looks (a long run of a base64 or hex
alphabet with high Shannon entropy, found by detect-secrets' high-entropy plugins). The
plugins are tuned for JSON values rather than source files (see
:class:`DetectSecretsRecognizer`).
"""

from __future__ import annotations

import base64
import binascii
import re
import string
from collections.abc import Iterator
from functools import cached_property

from detect_secrets.filters.heuristic import (
    _get_id_detector_regex,
    is_indirect_reference,
    is_not_alphanumeric_string,
    is_potential_uuid,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import (
    Base64HighEntropyString,
    HexHighEntropyString,
    HighEntropyStringsPlugin,
)
from detect_secrets.plugins.keyword import CONFIG_DENYLIST_REGEX_TO_GROUP
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from presidio_analyzer import LocalRecognizer, RecognizerResult

from keyturn.masking.field_names import sensitive_field_entity
from keyturn.masking.recognizers.engine import LANGUAGE
from keyturn.masking.recognizers.patterns import PatternRow, pattern_recognizers

#: (entity, pattern name, regex, score): the password between ``user:`` and ``@`` in a URL.
URL_PASSWORD_PATTERNS: tuple[PatternRow, ...] = (
    (
        "SECRET",
        "password in url",
        # the user name may be empty (``redis://:password@host``, as Redis and others spell it);
        # the password runs to the last ``@`` before the host, as URL parsers read it, so an ``@``
        # left unencoded in it does not leave the rest in clear
        r"(?i:\b[a-z][a-z0-9+.\-]{1,20}://)[^\s/?#@:]{0,256}:\K[^\s/?#]{1,256}(?=@[^\s/?#@]*(?:[/?#\s]|$))",
        0.9,
    ),
    (
        "SECRET",
        "password in url holding / ? or #",
        # left unencoded, those end a URL's authority for a parser, but a person writing a
        # connection string may not encode them: up to the first ``@`` after ``user:``, whatever
        # it holds (a path with an ``@`` in it may be masked too: over, never under)
        r"(?i:\b[a-z][a-z0-9+.\-]{1,20}://)[^\s/?#@:]{0,256}:\K[^\s@]{1,256}(?=@)",
        0.9,
    ),
)

#: Hex tokens of these lengths are identifiers, not secrets: object ids (24), md5 / uuid
#: without dashes / trace ids (32), sha1 / git commits (40), sha256 (64), sha512 (128).
#: They stay clear unless a field name or a keyword says otherwise.
HEX_ID_LENGTHS = frozenset({24, 32, 40, 64, 128})

# Every detect-secrets keyword contains one of these; its config-file regexes all need an
# assignment or comparison character after (or before) the keyword.
_KEYWORD_HINT = "(?i:key|pass|pwd|secret|contrase)"
_KEYWORD_OPERATORS = frozenset(":=;!")

#: ``(?=[^\v'"]*)``: a lookahead in each of detect-secrets' config-file keyword regexes that
#: always holds (its ``*`` matches nothing too) yet reads on to the next quote or the line's end
#: whenever it is tried. Tried at every keyword a match then fails at, it made a line of many
#: ``password=<SECRET>`` (what masking's second round reads) cost the square of its length: 11
#: CPU-minutes for a body of 1 MB. Without it the regexes match exactly the same.
_NO_OP_LOOKAHEAD = r"""(?=[^\v\'\"]*)"""


def _keyword_regexes() -> tuple[tuple[re.Pattern[str], int], ...]:
    """detect-secrets' config-file keyword regexes (with their value's group), each without
    :data:`_NO_OP_LOOKAHEAD`; a regex that no longer holds it is taken as it is."""
    return tuple(
        (re.compile(regex.pattern.replace(_NO_OP_LOOKAHEAD, ""), regex.flags), group)
        for regex, group in CONFIG_DENYLIST_REGEX_TO_GROUP.items()
    )


_BASE64_RUN = "[" + re.escape(Base64HighEntropyString().charset) + "]{23,}"
_HEX_RUN = r"(?<![A-Za-z0-9])[0-9A-Fa-f]{20,}(?![A-Za-z0-9])"

#: detect-secrets' plugins for service tokens with a prefix of their own (GitLab ``glpat-…``,
#: Stripe ``sk_live_…``, OpenAI, PyPI, SendGrid, Square, Telegram, Mailchimp): their regexes,
#: as a scan of a file would apply them. Their randomness alone is often below the entropy
#: limits (a 20-character GitLab token), so the prefix is what finds them.
_PREFIXED_TOKENS: tuple[re.Pattern[str], ...] = tuple(
    pattern
    for plugin in (
        GitLabTokenDetector,
        StripeDetector,
        OpenAIDetector,
        PypiTokenDetector,
        SendGridDetector,
        SquareOAuthDetector,
        TelegramBotTokenDetector,
        MailchimpDetector,
    )
    for pattern in plugin.denylist
)
#: Text one of those regexes needs in every match (``tests/unit/test_masking.py`` checks each
#: plugin's own examples pass it): most lines have none, and one search here costs less than
#: running the sixteen.
_PREFIXED_TOKEN_MARK = re.compile(r"gl[a-z]{2,6}-|GR1348941|k_live_|T3BlbkFJ|pypi-|SG\.|sq0csp-|[0-9]:|-us[0-9]")
#: An ``Authorization`` scheme's credentials written out: ``Basic`` and base64 of ``user:pass``
#: (decoded to be sure: the word alone is common), or ``Bearer`` and a token of 16 or more
#: characters holding a digit. detect-secrets' basic-auth plugin looks only inside URLs.
_BASIC = re.compile(r"(?i:\bbasic)\s+([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
_BEARER = re.compile(r"(?i:\bbearer)\s+([A-Za-z0-9\-._~+/]*[0-9][A-Za-z0-9\-._~+/]*=*)")
_SCHEME_HINT = re.compile(r"[Bb](?:[Aa][Ss][Ii][Cc]|[Ee][Aa][Rr][Ee][Rr])")  # (?i) costs more per line


#: What ends a secret's value in text besides a space or a quote: ``&``, ``;`` or ``,`` followed by
#: another ``name=`` or ``name:`` (``?password=x&user=y``, ``credentials=x;token: y``). Any other
#: sign is part of the value (``Tr0ub4dor&3``, ``a;b,c``): a password may hold any, and the part
#: after one was left in clear.
_NEXT_NAME = r"[&;,](?=[A-Za-z_][A-Za-z0-9_.\-]{0,63}[ \t]*[:=])"
_VALUE = rf"(?:(?!{_NEXT_NAME})[^\s\"'`])"
_NEXT_NAME_AT = re.compile(_NEXT_NAME)
#: A value written after a name and ``:`` or ``=`` (``access_token=…``, ``pw: …``, ``"db_pass":
#: "…"``, ``?token=…``): masked when the field-name rule (``field_names.sensitive_field_entity``)
#: calls the name a secret's, so a name is judged the same way as a JSON key and as text.
#: detect-secrets' keyword list has no ``token``, ``passphrase``, ``credential`` or ``pw``. The
#: value is a lookahead, so a value that is itself ``name=value`` is read again.
_NAMED_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.\-])([A-Za-z][A-Za-z0-9_.\-]{0,63})[\"']?[ \t]*[:=][ \t]*[\"']?"
    rf"(?=({_VALUE}{{1,512}}))"
)
#: A value written after a secret's name and a space, as people write it in a sentence
#: (``password Tr0ub4dor&3``, ``the db password is Tr0ub4dor&3``): masked when it looks generated
#: (:func:`_looks_secret`), so that ``password reset for bob`` stays readable. A lookahead too.
_SPOKEN_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.\-])([A-Za-z][A-Za-z0-9_.\-]{0,63})[ \t]+(?=(?:(?i:is|was)[ \t]+)?[\"'`]?([^\s\"'`]{8,512}))"
)
#: The shortest line holding a secret's name, a space and a value of eight characters (``pw x…``).
_SPOKEN_MIN_CHARS = 11
#: Text every name the rule calls secret holds (case aside): a line without it has no such name.
#: Tested lower-cased with ``in``, which costs a tenth of one case-blind search of them all.
_NAMED_HINTS = (
    "pass", "pw", "pin", "secret", "token", "key", "credential", "authorization", "cookie", "cv", "ssn", "card",
)  # fmt: skip


def _may_name_a_secret(line: str) -> bool:
    lowered = line.lower()
    return any(hint in lowered for hint in _NAMED_HINTS)


#: ``Authorization: <scheme> <credentials>``: the credentials are the secret, the scheme is not.
_SCHEME_THEN_CREDENTIALS = re.compile(r"[ \t]+([^\s\"'`,;&<>(){}\[\]]{1,512})")
_AUTH_SCHEMES = frozenset({"basic", "bearer", "digest", "negotiate", "ntlm", "token", "hoba", "mutual", "apikey"})


def named_value_spans(line: str) -> Iterator[tuple[int, int]]:
    """Spans of ``line`` holding a value assigned to a secret's name (``_NAMED_VALUE``); the
    card, SSN and key names have recognizers of their own, which name what they find."""
    for match in _NAMED_VALUE.finditer(line):
        value, start = match.group(2), match.end()
        if sensitive_field_entity(match.group(1)) != "SECRET":
            continue
        if value.lower() in _AUTH_SCHEMES:
            credentials = _SCHEME_THEN_CREDENTIALS.match(line, start + len(value))
            if credentials is None:
                continue
            value, start = credentials.group(1), credentials.start(1)
        if is_templated_secret(value) or is_prefixed_with_dollar_sign(value):
            continue
        yield start, start + len(value)


def spoken_value_spans(line: str) -> Iterator[tuple[int, int]]:
    """Spans of ``line`` holding a generated-looking value written after a secret's name and a
    space, ``is`` or ``was`` maybe between (``_SPOKEN_VALUE``)."""
    for match in _SPOKEN_VALUE.finditer(line):
        value = match.group(2)
        if _looks_secret(value) and sensitive_field_entity(match.group(1)) == "SECRET":
            start = match.start(2)
            yield start, start + len(value)


#: Characters a generated secret mixes; a word, a number, a path or a name mixes fewer.
_CHARACTER_CLASSES = (str.islower, str.isupper, str.isdigit, lambda ch: not ch.isalnum())


def _looks_secret(value: str) -> bool:
    """Whether a word after a secret's name is the secret rather than the sentence going on: eight
    characters or more, of at least three of lower case, upper case, digits and signs (a password
    policy's usual demand), an upper-case letter among them. ``reset``, ``rotated``, ``user-42``,
    ``example.com/reset`` fall short, and so do names of lower case, digits and dashes
    (``the target in secret 'db-url-2'``: Keyturn's own messages name secret references so); a
    password of letters alone, or of no capital, written after its name with no ``:`` or ``=``,
    is missed."""
    if is_templated_secret(value) or is_prefixed_with_dollar_sign(value):
        return False
    mixed = sum(any(kind(ch) for ch in value) for kind in _CHARACTER_CLASSES) >= 3
    return mixed and any(ch.isupper() for ch in value)


class DetectSecretsRecognizer(LocalRecognizer):
    """``SECRET`` from detect-secrets' keyword and high-entropy plugins, line by line.

    Runs the plugins' own regexes and entropy limits (defaults: base64 4.5, hex 3.0) with
    these differences from a file scan, each to suit JSON values rather than source files:

    - the keyword plugin uses the regexes detect-secrets applies to config files
      (``password: x``, ``password=x``, quoted or not), and reports every assignment on a
      line rather than the first per regex;
    - entropy strings need no quotes around them (a parameter value is already a string);
      the run is the maximal stretch of the plugin's alphabet, as in detect-secrets' own
      unquoted mode;
    - a base64-alphabet run counts only if it mixes upper case, lower case and digits, as
      generated secrets do, which keeps paths, snake_case names and prose clear;
    - a hex run counts only if it is a whole token of 20 or more characters, contains a
      letter, and its length is not one of :data:`HEX_ID_LENGTHS` (digests, uuids, trace
      and commit ids); shorter hex tokens are resource ids and pod hashes
      (``sg-0123456789abcdef0``, ``api-7d9f8c6b5-x2x4z``), whose entropy passes 3.0 easily.

    detect-secrets' default heuristic filters then drop uuids, sequential strings, templated
    values (``<x>``, ``{x}``, ``${x}``), ``$VAR`` references, id-named values and indirect
    references (``secret = get_secret()``), as a default scan would.
    """

    name: str  # set by the base class's constructor, which does not declare it

    ENTITY = "SECRET"

    def __init__(self) -> None:
        self._base64 = Base64HighEntropyString()
        self._hex = HexHighEntropyString()
        self._base64_run = re.compile(_BASE64_RUN)
        self._hex_run = re.compile(_HEX_RUN)
        self._keyword_hint = re.compile(_KEYWORD_HINT)
        self._keyword_regexes = _keyword_regexes()
        super().__init__(
            supported_entities=[self.ENTITY],
            supported_language=LANGUAGE,
            name="DetectSecretsRecognizer",
        )

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        results = []
        line_start = 0
        for line in text.split("\n"):
            for start, end in self.secret_spans(line):
                results.append(self._result(line_start + start, line_start + end))
            line_start += len(line) + 1
        return results

    def secret_spans(self, line: str) -> Iterator[tuple[int, int]]:
        """Spans of ``line`` that detect-secrets' plugins flag as secrets."""
        if len(line) >= 23:
            yield from self._entropy_spans(line, self._base64, self._base64_run, _base64_shape)
        if len(line) >= 20:
            yield from self._entropy_spans(line, self._hex, self._hex_run, _hex_shape)
        if not _KEYWORD_OPERATORS.isdisjoint(line) and self._keyword_hint.search(line):
            yield from self._keyword_spans(line)
        named = "=" in line or ":" in line
        spoken = len(line) >= _SPOKEN_MIN_CHARS and (" " in line or "\t" in line)
        if (named or spoken) and _may_name_a_secret(line):
            if named:
                yield from named_value_spans(line)
            if spoken:
                yield from spoken_value_spans(line)
        if len(line) >= 20 and _PREFIXED_TOKEN_MARK.search(line):
            for pattern in _PREFIXED_TOKENS:
                for match in pattern.finditer(line):
                    yield match.span()
        if _SCHEME_HINT.search(line):
            yield from _scheme_credential_spans(line)

    def could_flag(self, text: str) -> bool:
        """Whether :meth:`analyze` reports anything in ``text``; cheap enough to pre-check."""
        if (
            len(text) < 20
            and _KEYWORD_OPERATORS.isdisjoint(text)
            and not _SCHEME_HINT.search(text)
            and (len(text) < _SPOKEN_MIN_CHARS or not _may_name_a_secret(text))
        ):
            return False
        for line in text.split("\n"):
            for _ in self.secret_spans(line):
                return True
        return False

    def _entropy_spans(
        self,
        line: str,
        plugin: HighEntropyStringsPlugin,
        runs: re.Pattern[str],
        shape,
    ) -> Iterator[tuple[int, int]]:
        id_names = _IdNames(line)
        for match in runs.finditer(line):
            value = match.group()
            if (
                shape(value)
                and plugin.calculate_shannon_entropy(value) > plugin.entropy_limit
                and not _filtered_by_default_heuristics(value, line, id_names)
            ):
                yield match.span()

    def _keyword_spans(self, line: str) -> Iterator[tuple[int, int]]:
        if is_indirect_reference(line):
            return
        for keyword_regex, group in self._keyword_regexes:
            for match in keyword_regex.finditer(line):
                value = match.group(group)
                if value and not (is_templated_secret(value) or is_prefixed_with_dollar_sign(value)):
                    yield _value_only(line, *match.span(group))

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type=self.ENTITY,
            start=start,
            end=end,
            score=0.6,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


def _value_only(line: str, start: int, end: int) -> tuple[int, int]:
    """The assigned value of a keyword match, not the rest of its line: detect-secrets' config-file
    regexes take everything to the line's end (``password=x was exposed in …`` hid the sentence
    approvers must read). A quoted value runs to its closing quote, a generated-looking one (with
    a digit or a sign) to the first space, a plain word to the line's end as before."""
    quote = line[start - 1] if start > 0 and line[start - 1] in "\"'`" else None
    if quote is not None:
        stop = line.find(quote, start, end)
        return start, stop if stop > start else end
    space = next((i for i in range(start, end) if line[i].isspace()), end)
    if (next_name := _NEXT_NAME_AT.search(line, start, space)) is not None:
        space = next_name.start()  # ``?password=x&user=y``: the value ends where the next name starts
    token = line[start:space]
    # a word of letters alone may begin a passphrase written out (``password: correct horse
    # battery``): then the line's end stays masked; a token with digits or signs is a value alone
    return start, space if not token.isalpha() else end


def _scheme_credential_spans(line: str) -> Iterator[tuple[int, int]]:
    for match in _BASIC.finditer(line):
        try:
            decoded = base64.b64decode(match.group(1), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
        if ":" in decoded:
            yield match.span(1)
    for match in _BEARER.finditer(line):
        if len(match.group(1)) >= 16:
            yield match.span(1)


_UPPER = frozenset(string.ascii_uppercase)
_LOWER = frozenset(string.ascii_lowercase)
_DIGITS = frozenset(string.digits)


def _base64_shape(value: str) -> bool:
    return not (_UPPER.isdisjoint(value) or _LOWER.isdisjoint(value) or _DIGITS.isdisjoint(value))


def _hex_shape(value: str) -> bool:
    return len(value) not in HEX_ID_LENGTHS and not value.isdigit()


def _filtered_by_default_heuristics(value: str, line: str, id_names: _IdNames) -> bool:
    return (
        is_sequential_string(value)
        or is_potential_uuid(value)
        or is_templated_secret(value)
        or is_prefixed_with_dollar_sign(value)
        or is_not_alphanumeric_string(value)
        or id_names.before(line.index(value))
    )


class _IdNames:
    """detect-secrets' ``is_likely_id_string`` for the high-entropy plugins, asked of one line many
    times: whether an id's name (``_id``, ``userids``…, ``_get_id_detector_regex``) ends before the
    value's first place in the line. It searches the line up to the value again for each value, so
    a line of many random tokens cost the square of its length (a line of 186 KB, 20 CPU-s); the
    line is searched here once. At each place the regex can match one way only, so the first match
    in the whole line is the one that ends first, and one ends before a place exactly when it does."""

    def __init__(self, line: str) -> None:
        self._line = line

    @cached_property
    def _first_end(self) -> int | None:  # searched only for a line with a random-looking token
        found = _get_id_detector_regex().search(self._line)
        return found.end() if found is not None else None

    def before(self, index: int) -> bool:
        return self._first_end is not None and self._first_end <= index


def secret_recognizers() -> list[LocalRecognizer]:
    """The ``SECRET`` recognizers: the URL password pattern, then detect-secrets' plugins."""
    return [*pattern_recognizers(URL_PASSWORD_PATTERNS), DetectSecretsRecognizer()]
