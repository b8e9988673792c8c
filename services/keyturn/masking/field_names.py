"""Masking by field name, and the policy's extra fields.

A field whose *name* says it holds a credential is masked whole, whatever its value looks
like: ``{"password": "hunter2"}`` has nothing a pattern could find, and ``{"pin": 1234}``
is not even a string.

How a name is judged:

1. The name is split into lower-case words at ``_``, ``-``, ``.``, spaces, digits and
   camelCase humps: ``X-Api-Key`` → ``x api key``, ``clientSecret`` → ``client secret``.
2. The words are joined (``xapikey``) and searched for the terms in
   :data:`SENSITIVE_FIELD_TERMS`. A term counts where it *ends at the end of a word*
   (optionally plus a plural ``s``), wherever it starts: ``dbPassword``, ``clientsecret``,
   ``api_keys`` and ``private_key_pem`` match; ``secretary``, ``tokenizer`` and
   ``classname`` (``ssn`` inside a word) do not. A few short terms count only as whole words
   (:data:`WHOLE_WORD_TERMS`: ``db_pass``, ``pw``, ``pin``).
3. Names that describe a secret rather than hold one are exempt: the last word is one of
   :data:`DESCRIPTOR_WORDS` and no term ends there (``token_type``, ``secret_name``,
   ``password_expires_at``, ``private_key_path``), or the first word is one of
   :data:`QUANTITY_WORDS` (``max_tokens``). Their values are still scanned like any other.

Extra fields come from the policy as dotted paths and are masked whole as well. Both
``parameters.destination_credentials`` (rooted at the policy's input document) and
``destination_credentials`` (rooted at the parameters) are accepted; a path starting with
``parameters.`` is tried both ways, so a parameter literally named ``parameters`` is still
reachable. Lists are transparent: ``recipients.email`` masks the ``email`` of every element
of the ``recipients`` list. Keys containing dots cannot be addressed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Term (lower case, no separators) → entity type reported for the masked field; on a tie
#: (two terms ending at the same place) the earlier entry wins.
SENSITIVE_FIELD_TERMS: dict[str, str] = {
    "privatekey": "PRIVATE_KEY",
    "cardnumber": "CREDIT_CARD",
    "creditcard": "CREDIT_CARD",
    "ssn": "US_SSN",
    "password": "SECRET",
    "passwd": "SECRET",
    "passphrase": "SECRET",
    "pwd": "SECRET",
    "secret": "SECRET",
    "token": "SECRET",
    "apikey": "SECRET",
    "accesskey": "SECRET",
    "authorization": "SECRET",
    "credential": "SECRET",
    "cookie": "SECRET",
    "cvv": "SECRET",
    "cvc": "SECRET",
}

#: Terms that count only as whole words (plus a plural ``s``), never inside one: ``db_pass``,
#: ``pw``, ``pin_code`` are secrets, ``bypass``, ``compass``, ``pwm`` and ``spin`` are not.
WHOLE_WORD_TERMS: dict[str, str] = {"pass": "SECRET", "pw": "SECRET", "pin": "SECRET"}

#: A last word that makes the field *about* a secret rather than the secret itself.
DESCRIPTOR_WORDS = frozenset(
    {
        "algorithm", "arn", "at", "count", "description", "enabled", "endpoint",
        "expiration", "expired", "expires", "expiry", "field", "file", "fingerprint",
        "format", "header", "hint", "id", "ids", "kind", "label", "len", "length", "limit",
        "name", "names", "path", "policy", "present", "provider", "required", "rotated",
        "rotation", "scope", "scopes", "set", "source", "ttl", "type", "types", "uri",
        "url", "usage", "used", "version",
    }
)  # fmt: skip

#: A first word that makes the field a quantity (``max_tokens``, ``total_tokens``).
QUANTITY_WORDS = frozenset({"max", "min", "num", "total"})

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


@functools.lru_cache(maxsize=4096)
def sensitive_field_entity(name: str) -> str | None:
    """The entity type a field called ``name`` is masked as, or None if its name is fine.

    When several terms match, the rightmost decides the type, as the last word of an
    English compound names the thing (``ssh_private_key_passphrase`` is a passphrase).
    """
    words = [word.lower() for word in _WORDS.findall(name)]
    if not words or words[0] in QUANTITY_WORDS:
        return None
    joined = "".join(words)
    word_ends = set()
    position = 0
    entity = None
    rightmost = -1
    for word in words:
        if term_entity := WHOLE_WORD_TERMS.get(word) or WHOLE_WORD_TERMS.get(word[:-1] if word[-1:] == "s" else ""):
            entity, rightmost = term_entity, position + len(word)
        position += len(word)
        word_ends.add(position)
    for term, term_entity in SENSITIVE_FIELD_TERMS.items():
        for found in re.finditer(term, joined):
            end = found.end()
            if end not in word_ends:
                end += 1
                if joined[end - 1 : end] != "s" or end not in word_ends:
                    continue
            if end > rightmost:
                entity, rightmost = term_entity, end
    if entity and words[-1] in DESCRIPTOR_WORDS and rightmost != len(joined):
        return None
    return entity


def column_entity(name: str) -> str:
    """The entity a column the policy masks whole is shown as (``<PASSWORD>``-like by its name,
    else ``<MASKED>``): in an export's file and in the rows a query returns alike."""
    return sensitive_field_entity(name) or "MASKED"


@dataclass
class FieldPathTrie:
    """The policy's extra fields as a trie of key segments; see the module docstring."""

    children: dict[str, FieldPathTrie] = field(default_factory=dict)
    terminal: bool = False

    @classmethod
    def from_paths(cls, paths: Iterable[str]) -> FieldPathTrie | None:
        """A trie of ``paths`` (None when there are none, so walks can skip it)."""
        if isinstance(paths, str):
            raise ValueError(f"extra fields must be a list of dotted paths, got the string {paths!r}")
        root = cls()
        for path in paths:
            segments = path.split(".")
            if not all(segments):
                raise ValueError(f"extra field {path!r} is not a dotted path like 'parameters.destination_credentials'")
            root._add(segments)
            if segments[0] == "parameters" and len(segments) > 1:
                root._add(segments[1:])
        return root if root.children else None

    def _add(self, segments: list[str]) -> None:
        node = self
        for segment in segments:
            node = node.children.setdefault(segment, FieldPathTrie())
        node.terminal = True

    def child(self, key: str) -> FieldPathTrie | None:
        """The subtree for ``key``, or None when no extra field goes through it."""
        return self.children.get(key)
