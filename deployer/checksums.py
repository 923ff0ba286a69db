"""Checksums of revision files that follow what the code does, not how the file is laid out.

A revision's *code checksum* ignores line endings, a BOM, trailing whitespace, comments,
docstrings and formatting, so a CRLF checkout (`core.autocrlf`) or a comment fix never blocks a
deploy, while any change to the code still does:

- Python: a hash of the token stream (`tokenize`) without comments, non-logical newlines and
  docstrings; string literals are hashed by value (quote style and prefixes that do not change the
  value are layout), f-strings as their source text. Tokens, not `ast.dump`: the AST's dump
  changes between Python versions, the token stream does not (f-strings, which Python 3.12 splits
  into parts, are put back together), so one file gives one checksum on 3.11 and 3.13.
- SQL and other text: the text with comments and runs of whitespace normalised, literals kept
  (PostgreSQL's own scanner, through `pglast`).

The raw-bytes hash (`raw_checksum`) stays in the history for audit.

The Python part needs the standard library only: it also runs under other interpreters.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import sys
import token
import tokenize
from pathlib import Path

PREFIX = "c1:"  # marks a code checksum (and its algorithm) in the history


def raw_checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_checksum(path: str | Path, data: bytes | None = None, *, compiles: bool = False) -> str:
    """The checksum of what the file does. Falls back to the raw bytes' hash (prefixed the same
    way, so it is compared like any other) when the file cannot be read as code. `compiles`:
    the caller knows a Python file compiles (Alembic imported it; see `python_canonical`)."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    try:
        if path.suffix == ".py":
            canonical = python_canonical(data, compiles=compiles)
        else:
            canonical = sql_canonical(data)
    except (SyntaxError, tokenize.TokenError, UnicodeDecodeError, ValueError):
        canonical = "raw\0" + raw_checksum(data)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "pglast":
            raise
        canonical = "raw\0" + raw_checksum(data)
    return PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- Python
#
# The token stream is the one of the standard `tokenize` module. On Python 3.11 (the image's),
# whose `tokenize` is pure Python (about 1.5 ms a revision file, paid for every revision a
# deploy applies), the tokens come from the interpreter's own C tokenizer instead (`_tokenize`,
# which `tokenize` itself uses from 3.12 on), mapped to what `tokenize` gives; and for a file
# known to compile (a revision Alembic imported: `compiles`) the canonical text is written in one
# pass over those tokens, docstrings found as they go by (`_c_canonical`), instead of a second
# parse. Same checksums, compared with `tokenize` and the AST on every file of the standard
# library and the installed packages; about 0.13 ms a revision.

if sys.version_info < (3, 12):
    try:
        from _tokenize import TokenizerIter as _TokenizerIter
    except ImportError:  # not CPython
        _TokenizerIter = None
else:
    _TokenizerIter = None

Position = tuple[int, int]
Span = tuple[Position, Position]
Token = tuple[int, str, Position, Position]  # tokenize's type, string, start and end


def _docstring_spans(source: str) -> list[Span]:
    """(start, end) positions of the docstrings of the module, its classes and functions (rows,
    and columns in UTF-8 bytes as the AST gives them). Classes and functions are statements: only
    statement lists are walked, not expressions."""
    todo: list[ast.AST] = [ast.parse(source)]
    spans = []
    while todo:
        node = todo.pop()
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = body[0] if body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                end = (first.end_lineno or first.lineno, first.end_col_offset or 0)
                spans.append(((first.lineno, first.col_offset), end))
        todo += body
        for field in ("orelse", "finalbody", "handlers", "cases"):
            todo += getattr(node, field, ())
    return spans


_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_STRUCTURE = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_FSTRING_START = getattr(token, "FSTRING_START", -1)  # Python 3.12+
_FSTRING_END = getattr(token, "FSTRING_END", -2)


def python_canonical(data: bytes, *, compiles: bool = False) -> str:
    """The token stream of a Python file as text, one token a line. `compiles`: the caller knows
    the file compiles (Alembic imported it); then, on 3.11, the text is written in one pass over
    the C tokenizer's tokens (`_c_canonical`), and the parse that finds the docstrings (and would
    tell whether the file compiles) is saved."""
    encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
    source = data.decode(encoding).removeprefix("\ufeff")  # "utf-8-sig" drops the BOM already
    if compiles and _TokenizerIter is not None:
        text = _c_canonical(source)
        if text is not None:
            return text
    toks = _c_tokens(source) if _TokenizerIter is not None else None
    spans = _docstring_spans(source)
    rows = {row for (first, _), (last, _) in spans for row in range(first, last + 1)}
    if toks is None:
        toks = [(t.type, t.string, t.start, t.end) for t in _tokenize(data)]
    elif rows:
        toks = _char_columns(toks, rows, source)
    lines = source.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    skip_newline = False
    while i < len(toks):
        kind, text, start, _ = toks[i]
        i += 1
        if kind in _SKIP:
            continue
        if start[0] in rows and any(first <= start < end for first, end in spans):
            skip_newline = True  # the docstring statement's own NEWLINE goes with it
            continue
        if skip_newline and kind == tokenize.NEWLINE:
            skip_newline = False
            continue
        skip_newline = False
        if kind == _FSTRING_START:
            depth, end = 1, start
            while depth and i < len(toks):
                depth += {_FSTRING_START: 1, _FSTRING_END: -1}.get(toks[i][0], 0)
                end = toks[i][3]
                i += 1
            out.append("STRING " + _slice(lines, start, end))
        elif kind in _STRUCTURE:
            out.append(tokenize.tok_name[kind])
        elif kind == tokenize.STRING:
            out.append("STRING " + _string_value(text))
        else:
            out.append(f"{tokenize.tok_name[kind]} {text}")
    return "\n".join(out)


def _tokenize(data: bytes) -> list[tokenize.TokenInfo]:
    return list(tokenize.tokenize(io.BytesIO(data).readline))


class _Unusual(Exception):
    """A token the C tokenizer of 3.11 gives that `tokenize` would not give alike."""


def _c_tokens(source: str) -> list[Token] | None:
    """The tokens of `source` as `tokenize` gives them (type, string, start, end), but columns
    in UTF-8 bytes, from the C tokenizer of Python 3.11; None where they might differ (a lone CR,
    which the C tokenizer reads as a line break and tokenize does not; a name with a character
    that is not `\\w`, such as a combining mark; an unusual token): then `tokenize` reads it.
    Exact operator types become OP; INDENT and DEDENT, which start no docstring, start nowhere;
    the C tokenizer reads CRLF as LF, so an f-string, kept as written, is cut from the
    source."""
    crlf = "\r" in source
    if crlf and source.count("\r") != source.count("\r\n"):
        return None
    assert _TokenizerIter is not None
    raw = source.split("\n") if crlf else []
    out: list[Token] = []
    append = out.append
    op, name = tokenize.OP, tokenize.NAME
    try:
        for text, kind, row, end_row, col, end_col, _line in _TokenizerIter(source):
            if kind > op:
                if kind not in _ASYNC:
                    raise _Unusual(kind)
                kind = name
            elif kind >= _FIRST_OPERATOR:
                kind = op
            elif kind == tokenize.INDENT or kind == tokenize.DEDENT:
                row = col = 0  # never in a docstring (tokenize: where the line starts)
            elif kind == name and not text.isascii() and not _WORD.fullmatch(text):
                raise _Unusual(kind)  # a combining mark: tokenize cuts the name there
            elif crlf and kind == tokenize.STRING and "\n" in text and _is_fstring(text):
                text = _cut(raw, row, col, end_row, end_col)
            append((kind, text, (row, col), (end_row, end_col)))
    except (_Unusual, SyntaxError, ValueError):
        return None
    return out


def _char_columns(toks: list[Token], rows: set[int], source: str) -> list[Token]:
    """The starts of the tokens on `rows` in characters, as `tokenize` gives them."""
    lines = source.split("\n")
    wide = {row for row in rows if not lines[row - 1].isascii()}
    if not wide:
        return toks
    out = []
    for tok in toks:
        (row, col) = tok[2]
        if row in wide and col > 0:
            tok = (tok[0], tok[1], (row, len(lines[row - 1].encode()[:col].decode())), tok[3])
        out.append(tok)
    return out


def _ascii_rows(source: str, first: int, last: int) -> bool:
    return all(line.isascii() for line in source.split("\n")[first - 1 : last])


_LINE = {tokenize.NEWLINE: "NEWLINE", tokenize.INDENT: "INDENT", tokenize.DEDENT: "DEDENT"}
_OPEN, _CLOSE = {"(", "[", "{"}, {")", "]", "}"}


def _c_canonical(source: str) -> str | None:
    """`python_canonical`'s text for a file that compiles, in one pass over the tokens of the C
    tokenizer of 3.11, mapped as `_c_tokens` maps them (None where it gives None: `tokenize`
    and the AST read the file then).

    A docstring is the first statement of the module and of each `def` and `class` body (after
    the header's colon: the first one outside brackets that no `lambda` of a return annotation
    takes) when it is `(`* STRING+ `)`* (none an f-string or bytes) up to the end of the
    statement. Its tokens are written as they come and taken back once the statement ends, with
    its own NEWLINE (a `;` after it stays). A docstring on a line that is not ASCII gives None:
    there `tokenize` counts columns in characters and the AST in bytes, and the text follows
    what the two give together."""
    crlf = "\r" in source
    if crlf and source.count("\r") != source.count("\r\n"):
        return None
    assert _TokenizerIter is not None
    raw = source.split("\n") if crlf else []
    op, name, string, newline = tokenize.OP, tokenize.NAME, tokenize.STRING, tokenize.NEWLINE
    out: list[str] = []
    append = out.append
    expect, header, lambdas, depth = True, False, 0, 0  # a body starts; in a def/class header
    start = -1  # where the statement that may be a docstring starts in `out` (-1: none)
    first_row = opened = closed = strings = 0
    all_ascii = source.isascii()
    try:
        for text, kind, row, end_row, col, end_col, _line in _TokenizerIter(source):
            if kind >= _FIRST_OPERATOR:
                if kind > op:
                    if kind not in _ASYNC:
                        return None
                    kind = name
                else:
                    kind = op
            elif kind == name and not text.isascii() and not _WORD.fullmatch(text):
                return None  # a combining mark: tokenize cuts the name there
            elif crlf and kind == string and "\n" in text and _is_fstring(text):
                text = _cut(raw, row, col, end_row, end_col)
            if expect and kind != newline and kind != tokenize.INDENT:
                expect, start, first_row, opened, closed, strings = False, len(out), row, 0, 0, 0
            if start >= 0:
                if kind == string and not closed:
                    if _prefix(text) & {"f", "b"}:
                        start = -1
                    else:
                        strings += 1
                elif kind == op and text == "(" and not strings:
                    opened += 1
                elif kind == op and text == ")" and strings and closed < opened:
                    closed += 1
                elif (kind == newline or (kind == op and text == ";")) and strings:
                    docstring = closed == opened
                    if docstring and not all_ascii and not _ascii_rows(source, first_row, row):
                        return None  # `tokenize` and the AST count its columns apart
                    if docstring:
                        del out[start:]
                    start = -1
                    if docstring and kind == newline:
                        continue
                else:
                    start = -1
            if kind == op:
                if text in _OPEN:
                    depth += 1
                elif text in _CLOSE:
                    depth -= 1
                elif text == ":" and header and not depth:
                    if lambdas:
                        lambdas -= 1
                    else:
                        header, expect = False, True
                append("OP " + text)
            elif kind == name:
                if text == "def" or text == "class":
                    header, lambdas = True, 0
                elif text == "lambda" and header and not depth:
                    lambdas += 1
                append("NAME " + text)
            elif kind == string:
                append("STRING " + _string_value(text))
            elif kind in _LINE:
                append(_LINE[kind])
            elif kind != tokenize.ENDMARKER:
                append(tokenize.tok_name[kind] + " " + text)
    except (SyntaxError, ValueError):
        return None
    return "\n".join(out)


def _prefix(text: str) -> set[str]:
    return set(text[: len(text) - len(text.lstrip("bBrRuUfF"))].lower())


_FIRST_OPERATOR = token.LPAR
_WORD = re.compile(r"\w+")  # a name for tokenize
_ASYNC = {getattr(token, "ASYNC", -1), getattr(token, "AWAIT", -1)}


def _is_fstring(text: str) -> bool:
    return "f" in _prefix(text)


def _cut(raw: list[str], row: int, col: int, end_row: int, end_col: int) -> str:
    """The source between two positions (UTF-8 byte columns) as written, CRLF and all."""
    text = "\n".join(raw[row - 1 : end_row]).encode()
    return text[col : len(text) - len(raw[end_row - 1].encode()) + end_col].decode()


def _slice(lines: list[str], start: Position, end: Position) -> str:
    (r1, c1), (r2, c2) = start, end
    if r1 == r2:
        return lines[r1 - 1][c1:c2]
    return lines[r1 - 1][c1:] + "".join(lines[r1 : r2 - 1]) + lines[r2 - 1][:c2]


_NOT_VERBATIM = re.compile(r"[\\\r\0]")  # escapes, a CR the parser reads as LF, a NUL


def _string_value(text: str) -> str:
    """A literal by value (`'a'` and `"a"` are one string); f-strings and anything that does not
    evaluate stay as written."""
    prefix = text[: len(text) - len(text.lstrip("bBrRuUfF"))].lower()
    if "f" in prefix:
        return text
    if "b" not in prefix:
        quotes = 3 if text.startswith(('"""', "'''"), len(prefix)) else 1
        body = text[len(prefix) + quotes : len(text) - quotes]
        if not _NOT_VERBATIM.search(body):  # the value is what is written: no need to parse it
            return repr(body)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return repr(value)


# --------------------------------------------------------------------------- SQL and other text


def sql_canonical(data: bytes) -> str:
    """SQL as PostgreSQL's own scanner reads it (`pglast`): comments dropped, tokens joined by
    one space, literals kept as written."""
    from pglast.parser import scan

    text = data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    encoded = text.encode("utf-8")  # scan() reports byte offsets
    return " ".join(
        encoded[t.start : t.end + 1].decode("utf-8")
        for t in scan(text)
        if t.name not in {"SQL_COMMENT", "C_COMMENT"}
    )
