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
import token
import tokenize
from pathlib import Path

PREFIX = "c1:"  # marks a code checksum (and its algorithm) in the history


def raw_checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_checksum(path: str | Path, data: bytes | None = None) -> str:
    """The checksum of what the file does. Falls back to the raw bytes' hash (prefixed the same
    way, so it is compared like any other) when the file cannot be read as code."""
    path = Path(path)
    if data is None:
        data = path.read_bytes()
    try:
        canonical = python_canonical(data) if path.suffix == ".py" else sql_canonical(data)
    except (SyntaxError, tokenize.TokenError, UnicodeDecodeError, ValueError):
        canonical = "raw\0" + raw_checksum(data)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "pglast":
            raise
        canonical = "raw\0" + raw_checksum(data)
    return PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- Python


def _docstring_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of the docstrings of the module, its classes and functions."""
    tree = ast.parse(source)
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            first = body[0]
            end = (first.end_lineno or first.lineno, first.end_col_offset or 0)
            spans.append(((first.lineno, first.col_offset), end))
    return spans


def _tokens(data: bytes) -> list[tokenize.TokenInfo]:
    return list(tokenize.tokenize(io.BytesIO(data).readline))


_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_STRUCTURE = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_FSTRING_START = getattr(token, "FSTRING_START", -1)  # Python 3.12+
_FSTRING_END = getattr(token, "FSTRING_END", -2)


def python_canonical(data: bytes) -> str:
    """The token stream of a Python file as text, one token a line."""
    toks = _tokens(data)
    source = data.decode(toks[0].string if toks and toks[0].type == tokenize.ENCODING else "utf-8")
    source = source.removeprefix("\ufeff")
    lines = source.splitlines(keepends=True)
    spans = _docstring_spans(source)
    out: list[str] = []
    i = 0
    skip_newline = False
    while i < len(toks):
        tok = toks[i]
        i += 1
        if tok.type in _SKIP:
            continue
        if any(start <= tok.start < end for start, end in spans):
            skip_newline = True  # the docstring statement's own NEWLINE goes with it
            continue
        if skip_newline and tok.type == tokenize.NEWLINE:
            skip_newline = False
            continue
        skip_newline = False
        if tok.type == _FSTRING_START:
            depth, start = 1, tok.start
            while depth and i < len(toks):
                depth += {_FSTRING_START: 1, _FSTRING_END: -1}.get(toks[i].type, 0)
                end = toks[i].end
                i += 1
            out.append("STRING " + _slice(lines, start, end))
        elif tok.type in _STRUCTURE:
            out.append(tokenize.tok_name[tok.type])
        elif tok.type == tokenize.STRING:
            out.append("STRING " + _string_value(tok.string))
        else:
            out.append(f"{tokenize.tok_name[tok.type]} {tok.string}")
    return "\n".join(out)


def _slice(lines: list[str], start: tuple[int, int], end: tuple[int, int]) -> str:
    (r1, c1), (r2, c2) = start, end
    if r1 == r2:
        return lines[r1 - 1][c1:c2]
    return lines[r1 - 1][c1:] + "".join(lines[r1 : r2 - 1]) + lines[r2 - 1][:c2]


def _string_value(text: str) -> str:
    """A literal by value (`'a'` and `"a"` are one string); f-strings and anything that does not
    evaluate stay as written."""
    prefix = re.match(r"[A-Za-z]*", text).group(0).lower()  # type: ignore[union-attr]
    if "f" in prefix:
        return text
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
