"""A safe subset of YAML, enough for fleet files, without a YAML library at run time.

Read: block mappings (`key: value`), block sequences (`- item`, including `- key: value`
starting a mapping), plain, single- and double-quoted scalars, `#` comments, flow lists and
mappings of scalars on one line (`[a, b]`, `{a: 1}`), and the scalars `true`/`false`/`null`
and integers. Not read (refused with the line number): anchors, aliases, tags, multi-line
scalars (`|`, `>`), several documents. Every value is plain data: nothing is constructed.
"""

from __future__ import annotations

import json
import re
from typing import Any


class YamlError(ValueError):
    """Not in the subset, or malformed: the message names the line."""


_INT = re.compile(r"^[-+]?\d+$")


def loads(text: str) -> Any:
    lines: list[tuple[int, int, str]] = []  # (line number, indent, content)
    for number, raw in enumerate(text.splitlines(), start=1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlError(f"line {number}: tabs are not allowed for indentation")
        content = _strip_comment(raw, number).rstrip()
        if not content.strip():
            continue
        if content.strip() in ("---", "..."):
            if lines:
                raise YamlError(f"line {number}: only one document is read")
            continue
        lines.append((number, len(content) - len(content.lstrip()), content.strip()))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][1])
    if end != len(lines):
        raise YamlError(f"line {lines[end][0]}: unexpected indentation")
    return value


def _strip_comment(line: str, number: int) -> str:
    quote = ""
    skip = False
    for i, ch in enumerate(line):
        if skip:
            skip = False
        elif quote:
            if ch == quote == "'" and line[i + 1 : i + 2] == "'":
                skip = True  # '' inside single quotes
            elif ch == "\\" and quote == '"':
                skip = True  # an escape inside double quotes
            elif ch == quote:
                quote = ""
        elif ch in "\"'" and (i == 0 or line[i - 1] in " :-[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    if quote:
        raise YamlError(f"line {number}: unterminated quoted string")
    return line


def _block(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][2].startswith("- ") or lines[i][2] == "-":
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        if not (content.startswith("- ") or content == "-"):
            break  # the mapping that holds this list goes on (`key:` then `- item` lines)
        rest = content[1:].strip()
        if not rest:  # the item is the block below
            if i + 1 < len(lines) and lines[i + 1][1] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][1])
            else:
                value, i = None, i + 1
        elif _is_key(rest):  # `- key: value` opens a mapping at the item's column
            child = indent + (len(content) - len(rest))
            lines[i] = (number, child, rest)
            value, i = _mapping(lines, i, child)
        else:
            value, i = _scalar(rest, number), i + 1
        out.append(value)
    if i < len(lines) and lines[i][1] > indent:
        raise YamlError(f"line {lines[i][0]}: unexpected indentation")
    return out, i


_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s"'#\[\]{},:][^:#]*?)\s*:(?:\s|$)""")


def _is_key(content: str) -> bool:
    return bool(_KEY.match(content))


def _mapping(lines: list[tuple[int, int, str]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        m = _KEY.match(content)
        if not m:
            raise YamlError(f"line {number}: expected `key: value`")
        key = _scalar(m.group(1), number)
        if not isinstance(key, str):
            key = str(key)
        if key in out:
            raise YamlError(f"line {number}: duplicate key {key!r}")
        rest = content[m.end() :].strip()
        if rest:
            out[key], i = _scalar(rest, number), i + 1
        elif i + 1 < len(lines) and (
            lines[i + 1][1] > indent
            or (lines[i + 1][1] == indent and lines[i + 1][2].startswith("- "))
        ):
            out[key], i = _block(lines, i + 1, lines[i + 1][1])
        else:
            out[key], i = None, i + 1
    if i < len(lines) and lines[i][1] > indent:
        raise YamlError(f"line {lines[i][0]}: unexpected indentation")
    return out, i


def _scalar(text: str, number: int) -> Any:
    text = text.strip()
    if text[:1] in ("&", "*", "!", "|", ">", "%", "@", "`"):
        raise YamlError(f"line {number}: anchors, aliases, tags and block scalars are not read")
    if text[:1] in "[{":
        return _flow(text, number)
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlError(f"line {number}: unterminated quoted string")
        try:
            return json.loads(text)
        except ValueError:
            raise YamlError(f"line {number}: bad escape in a double-quoted string") from None
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlError(f"line {number}: unterminated quoted string")
        return text[1:-1].replace("''", "'")
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("null", "~"):
        return None
    if _INT.match(text):
        return int(text)
    return text


def _flow(text: str, number: int) -> Any:
    closing = "]" if text[0] == "[" else "}"
    if not text.endswith(closing):
        raise YamlError(f"line {number}: a flow collection must close on its line")
    inner = text[1:-1].strip()
    items = [part.strip() for part in _split(inner, number)] if inner else []
    if closing == "]":
        return [_scalar(item, number) for item in items]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep:
            raise YamlError(f"line {number}: expected `key: value` in {{…}}")
        out[str(_scalar(key, number))] = _scalar(value, number) if value.strip() else None
    return out


def _split(text: str, number: int) -> list[str]:
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise YamlError(f"line {number}: unbalanced brackets or quotes")
    parts.append(text[start:])
    return parts
