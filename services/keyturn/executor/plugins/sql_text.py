"""What one SQL statement reads and writes, read conservatively from its text.

The sql plugin grants its per-command role only what the statement needs, so it has to know
which tables the statement touches. This is a small tokenizer with a few rules, not an SQL
parser; it understands comments, strings (``'…'``, ``E'…'``, ``$tag$…$tag$``) and quoted
identifiers, so none of those can hide or fake a keyword. It reads them as PostgreSQL's own
scanner does: a ``--`` comment ends at a carriage return as well as a line feed, an operator
ends where ``--`` or ``/*`` begins (``1 */* x */ 2`` is ``1 * 2``), and only
ASCII blanks separate words (any other character, a no-break space say, is part of a word to
PostgreSQL, and so to it). What it does not read as PostgreSQL would fails closed, and every
statement is run in the extended protocol (``sql.run_one``), which refuses more than one.

- One statement per command (a trailing ``;`` is fine).
- The main keyword (after an optional ``WITH`` clause and leading parentheses) decides the
  kind: ``SELECT``, ``VALUES`` and ``TABLE`` read; ``INSERT INTO t``, ``UPDATE t`` and
  ``DELETE FROM t`` write to ``t``. Anything else (DDL, ``COPY``, ``MERGE``, ``CALL``, ``SET``,
  ``EXPLAIN``…) is refused, and so are ``SELECT … INTO`` (it creates a table) and a ``WITH``
  whose parts modify data.
- Tables read: the name after ``FROM`` (inside a ``SELECT``, or an ``UPDATE``), ``JOIN``,
  ``DELETE … USING`` and ``TABLE``, and after each comma of such a ``FROM`` list. A name
  followed by ``(`` is a function; names the ``WITH`` clause defines are not tables.
- ``UPDATE`` and ``DELETE`` read the rows they change, so their target is also read;
  ``INSERT`` reads its target only with ``RETURNING`` or ``ON CONFLICT``.

Mistakes fail closed: a table it misses is not granted, and PostgreSQL refuses the
statement (the action ends failed, saying so); a word it takes for a table name but that
names no table is not granted anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class UnsupportedStatement(ValueError):
    """The statement is not one the sql plugin runs; the message says why and what to send."""


@dataclass(frozen=True)
class Token:
    kind: str  # word | quoted | string | number | param | punct | op
    text: str

    @property
    def keyword(self) -> str:
        """The upper-cased word for unquoted words; empty for anything else."""
        return self.text.upper() if self.kind == "word" else ""


@dataclass(frozen=True)
class StatementShape:
    """What a statement does: its kind, the tables it reads, and the one table it writes."""

    kind: str  # "read" | "write"
    reads: tuple[str, ...]  # table names as written (quotes kept), for to_regclass
    write_target: str | None = None
    write_privilege: str | None = None  # INSERT | UPDATE | DELETE

    @property
    def is_read(self) -> bool:
        return self.kind == "read"


_TOKEN = re.compile(
    r"""
    (?P<space>[\ \t\n\r\f\v]+)
  | (?P<line_comment>--[^\n\r]*)
  | (?P<block_comment>/\*)
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$)
  | (?P<quoted>"(?:[^"]|"")*")
  | (?P<param>\$[0-9]+)
  | (?P<word>[A-Za-z_\x80-\U0010FFFF][A-Za-z0-9_$\x80-\U0010FFFF]*)
  | (?P<number>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)
  | (?P<punct>[(),;.\[\]])
  | (?P<op>(?:(?!--|/\*)[-+*/<>=~!@\#%^&|`?:])+)
    """,
    re.VERBOSE,
)

_READ_KEYWORDS = {"SELECT", "VALUES", "TABLE"}
_WRITE_KEYWORDS = {"INSERT", "UPDATE", "DELETE"}
_MODIFYING = {"INSERT", "UPDATE", "DELETE", "MERGE"}
# Keywords that end a FROM list at its own parenthesis level.
_FROM_LIST_ENDS = {
    "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "FETCH", "FOR", "WINDOW", "UNION",
    "INTERSECT", "EXCEPT", "RETURNING", "SET", "ON", "VALUES", "SELECT",
}  # fmt: skip
_NOT_A_TABLE = {"ONLY", "LATERAL", "ROWS", "SELECT", "VALUES", "WITH", "UNNEST"}


def tokenize(text: str) -> list[Token]:
    """The statement's tokens without blanks and comments; raises UnsupportedStatement on junk."""
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise UnsupportedStatement(
                f"cannot read the statement at character {position + 1}: {text[position : position + 20]!r}"
            )
        kind = match.lastgroup or "" if match.lastgroup != "tag" else "dollar"
        if kind == "block_comment":
            position = _block_comment_end(text, match.start())
            continue
        if kind == "dollar":
            tag = match.group(0)
            end = text.find(tag, match.end())
            if end < 0:
                raise UnsupportedStatement(f"the dollar-quoted string opened with {tag} is never closed")
            tokens.append(Token("string", text[match.start() : end + len(tag)]))
            position = end + len(tag)
            continue
        position = match.end()
        if kind in ("space", "line_comment"):
            continue
        tokens.append(Token("string" if kind == "estring" else kind, match.group(0)))
    return tokens


def _block_comment_end(text: str, start: int) -> int:
    depth, position = 0, start
    while position < len(text):
        if text.startswith("/*", position):
            depth, position = depth + 1, position + 2
        elif text.startswith("*/", position):
            depth, position = depth - 1, position + 2
            if depth == 0:
                return position
        else:
            position += 1
    raise UnsupportedStatement("a /* comment is never closed")


def statement_shape(text: str) -> StatementShape:
    """The kind of ``text`` and the tables it touches; raises UnsupportedStatement with a reason."""
    tokens = tokenize(text)
    while tokens and tokens[-1].text == ";":
        tokens.pop()
    if not tokens:
        raise UnsupportedStatement("the statement is empty")
    if any(t.text == ";" for t in tokens):
        raise UnsupportedStatement("one statement per command: split the statements into separate actions")
    _check_parentheses(tokens)
    main, cte_names = _main_keyword(tokens)
    keyword = tokens[main].keyword
    if keyword in _READ_KEYWORDS:
        if any(t.keyword in _MODIFYING for t in tokens):
            raise UnsupportedStatement(
                f"a read that also uses {_first_modifying(tokens)} is not supported; send the write as its own "
                f"statement"
            )
        if any(t.keyword == "INTO" for t in tokens):
            raise UnsupportedStatement(
                "SELECT … INTO creates a table, which the sql plugin does not do; use INSERT INTO an existing table"
            )
        return StatementShape("read", _tables_read(tokens, main, cte_names, keyword))
    if keyword in _WRITE_KEYWORDS:
        if any(t.keyword in _MODIFYING for t in tokens[:main]):
            raise UnsupportedStatement(
                f"a WITH part that uses {_first_modifying(tokens[:main])} is not supported; send each write as "
                f"its own statement"
            )
        target, after_target = _write_target(tokens, main, keyword)
        reads = set(_tables_read(tokens, main, cte_names, keyword))
        later = {t.keyword for t in tokens[after_target:]}
        if keyword != "INSERT" or "RETURNING" in later or "CONFLICT" in later:
            reads.add(target)
        return StatementShape("write", tuple(sorted(reads)), target, keyword)
    shown = tokens[main].text if tokens[main].kind == "word" else "this statement"
    raise UnsupportedStatement(
        f"the sql plugin runs SELECT, VALUES, TABLE, INSERT, UPDATE and DELETE; {shown.upper()} is not one of them"
    )


def _check_parentheses(tokens: list[Token]) -> None:
    depth = 0
    for token in tokens:
        depth += {"(": 1, ")": -1}.get(token.text, 0) if token.kind == "punct" else 0
        if depth < 0:
            raise UnsupportedStatement("a ) closes nothing")
    if depth:
        raise UnsupportedStatement("a ( is never closed")


def _first_modifying(tokens: list[Token]) -> str:
    return next(t.keyword for t in tokens if t.keyword in _MODIFYING)


def _main_keyword(tokens: list[Token]) -> tuple[int, set[str]]:
    """(index of the main keyword, names the WITH clause defines)."""
    index, names = 0, set[str]()
    while tokens[index].text == "(" and index + 1 < len(tokens):
        index += 1
    if tokens[index].keyword != "WITH":
        return index, names
    index += 1
    if index < len(tokens) and tokens[index].keyword == "RECURSIVE":
        index += 1
    while index < len(tokens):
        name = tokens[index]
        if name.kind not in ("word", "quoted"):
            raise UnsupportedStatement("WITH must be followed by a name")
        names.add(_normal_name(name.text))
        index += 1
        if index < len(tokens) and tokens[index].text == "(":
            index = _after_parentheses(tokens, index)
        while index < len(tokens) and tokens[index].keyword in ("AS", "NOT", "MATERIALIZED"):
            index += 1
        if index >= len(tokens) or tokens[index].text != "(":
            raise UnsupportedStatement(f"cannot read the WITH part named {name.text}")
        index = _after_parentheses(tokens, index)
        if index < len(tokens) and tokens[index].text == ",":
            index += 1
            continue
        break
    if index >= len(tokens):
        raise UnsupportedStatement("a WITH clause must be followed by a statement")
    while tokens[index].text == "(" and index + 1 < len(tokens):
        index += 1
    return index, names


def _after_parentheses(tokens: list[Token], index: int) -> int:
    """The index after the ``)`` matching the ``(`` at ``index``."""
    depth = 0
    for position in range(index, len(tokens)):
        if tokens[position].text == "(":
            depth += 1
        elif tokens[position].text == ")":
            depth -= 1
            if depth == 0:
                return position + 1
    return len(tokens)


def _name_at(tokens: list[Token], index: int) -> tuple[str | None, int]:
    """(a possibly qualified name starting at ``index``, the index after it), or (None, index)."""
    parts: list[str] = []
    position = index
    while position < len(tokens) and tokens[position].kind in ("word", "quoted"):
        parts.append(tokens[position].text)
        if (
            position + 2 < len(tokens)
            and tokens[position + 1].text == "."
            and tokens[position + 2].kind in ("word", "quoted")
        ):
            position += 2
            continue
        position += 1
        break
    if not parts:
        return None, index
    return ".".join(parts), position


def _normal_name(text: str) -> str:
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


def _table_at(tokens: list[Token], index: int, cte_names: set[str]) -> str | None:
    """The table a from-item starting at ``index`` names, if it names one."""
    while index < len(tokens) and tokens[index].keyword in ("ONLY", "LATERAL"):
        index += 1
    if index >= len(tokens) or tokens[index].keyword in _NOT_A_TABLE:
        return None
    name, after = _name_at(tokens, index)
    if name is None or (after < len(tokens) and tokens[after].text == "("):
        return None  # a subquery, a function call, or nothing
    if "." not in name and _normal_name(name) in cte_names:
        return None
    return name


def _write_target(tokens: list[Token], main: int, keyword: str) -> tuple[str, int]:
    index = main + 1
    expected = {"INSERT": "INTO", "DELETE": "FROM"}.get(keyword)
    if expected:
        if index >= len(tokens) or tokens[index].keyword != expected:
            raise UnsupportedStatement(f"{keyword} must be followed by {expected} and a table")
        index += 1
    if index < len(tokens) and tokens[index].keyword == "ONLY":
        index += 1
    name, after = _name_at(tokens, index)
    if name is None:
        raise UnsupportedStatement(f"cannot tell which table {keyword} writes to")
    return name, after


def _tables_read(tokens: list[Token], main: int, cte_names: set[str], keyword: str) -> tuple[str, ...]:
    """Every table read, from FROM lists, JOINs, DELETE … USING and TABLE, at any depth."""
    found: list[str] = []
    # Per parenthesis level: does it hold a SELECT (or the top-level UPDATE/DELETE), and is a
    # FROM list open there (so that a comma starts another from-item)?
    has_query = [keyword in ("SELECT", "UPDATE", "DELETE", "TABLE")]
    from_open = [False]

    def take(index: int) -> None:
        table = _table_at(tokens, index, cte_names)
        if table is not None:
            found.append(table)

    for index, token in enumerate(tokens):
        word = token.keyword
        if token.text == "(":
            has_query.append(False)
            from_open.append(False)
            continue
        if token.text == ")":
            has_query.pop()
            from_open.pop()
            continue
        if word == "SELECT":
            has_query[-1] = True
        if word == "TABLE":
            take(index + 1)
        elif word == "FROM":
            if index == main + 1 and keyword == "DELETE":
                continue  # DELETE FROM names the write target
            previous = tokens[index - 1].keyword if index else ""
            if has_query[-1] and previous != "DISTINCT":
                from_open[-1] = True
                take(index + 1)
        elif word == "JOIN":
            from_open[-1] = True
            take(index + 1)
        elif word == "USING" and keyword == "DELETE" and len(has_query) == 1:
            if index + 1 < len(tokens) and tokens[index + 1].text != "(":
                from_open[-1] = True
                take(index + 1)
        elif token.text == "," and from_open[-1]:
            take(index + 1)
        elif word in _FROM_LIST_ENDS:
            from_open[-1] = word == "ON" and from_open[-1]
    unique: list[str] = []
    for table in found:
        if table not in unique:
            unique.append(table)
    return tuple(unique)
