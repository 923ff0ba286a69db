"""Secret redaction: every secret the run knows is replaced before text leaves the process.

The GitHub runner masks values registered with `::add-mask::`, but only in its own log; our JSON
report, files written outside GitHub, Slack messages and the terminal need the same care, so all
text passes through one `Redactor`.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO, overload
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "***"


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL, in every spelling that can reach a message: the URL itself; for
    a connection URL its password raw, percent-decoded and re-encoded the ways libraries do
    (`quote`, `quote_plus`, and SQLAlchemy's `quote(safe=" +")` in `render_as_string`); for a
    webhook its path and token. Every reading of an ambiguous URL counts (a bare `@` in a
    password: urllib splits at the last `@`, SQLAlchemy and libpq at the first)."""
    url = url.strip()
    if not url:
        return []
    found = [url]
    passwords: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            passwords.add(parts.password)
        if parts.scheme in {"http", "https"} and parts.path.strip("/"):
            found.append(parts.path)
            found += [seg for seg in parts.path.split("/") if len(seg) >= 8]
    except ValueError:
        pass
    m = re.match(r"^[^:/]+://[^:@/]*:([^@]*)@", url)
    if m and m.group(1):
        passwords.add(m.group(1))
    passwords.update(p for p in re.findall(r"(?:[?&])password=([^&]*)", url) if p)
    for password in passwords:
        decoded = unquote(password)
        found += [
            password,
            decoded,
            quote(decoded, safe=""),
            quote_plus(decoded),
            quote(decoded, safe=" +"),
        ]
    return list(dict.fromkeys(found))


def _pgpass_fields(line: str) -> list[str]:
    """A `.pgpass` line's fields: `:` separates them, `\\` escapes `:` and `\\`."""
    fields: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            cur.append(line[i + 1])
            i += 2
            continue
        if ch == ":" and len(fields) < 4:
            fields.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    fields.append("".join(cur))
    return fields


def libpq_passwords(url: str, environ: Mapping[str, str]) -> list[str]:
    """The passwords libpq could use for `url` besides the URL's own: `PGPASSWORD`, and the
    entries of the password file (`passfile` in the URL's query, else `PGPASSFILE`, else
    `~/.pgpass`) that match the URL's host, port, database and user (libpq's defaults from the
    environment; a socket directory counts as `localhost`). When a field cannot be known, every
    entry counts: masking one more value is harmless, missing one is not."""
    out: list[str] = []
    if environ.get("PGPASSWORD", "").strip():
        out.append(environ["PGPASSWORD"])
    hosts: list[str] = []
    port = dbname = user = None
    passfile = ""
    try:
        parts = urlsplit(url.strip())
        query = dict(parse_qsl(parts.query))
        netloc = parts.netloc.rpartition("@")[2]
        for item in filter(None, netloc.split(",")):
            host, p = item, ""
            if ":" in item and not item.endswith("]"):
                host, _, p = item.rpartition(":")
            hosts.append(unquote(host.strip("[]")))
            port = port or (p or None)
        hosts = [h for h in hosts if h] or [h for h in query.get("host", "").split(",") if h]
        port = query.get("port") or port
        dbname = query.get("dbname") or unquote(parts.path.lstrip("/")) or None
        user = query.get("user") or (unquote(parts.username) if parts.username else None)
        passfile = query.get("passfile", "")
    except ValueError:
        pass
    hosts = hosts or [h for h in environ.get("PGHOST", "").split(",") if h] or ["localhost"]
    hosts = ["localhost" if h.startswith("/") or h.startswith("@") else h for h in hosts]
    port = port or environ.get("PGPORT") or "5432"
    user = user or environ.get("PGUSER") or None
    dbname = dbname or environ.get("PGDATABASE") or user
    home = environ.get("HOME") or os.path.expanduser("~")
    path = passfile or environ.get("PGPASSFILE") or os.path.join(home, ".pgpass")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out

    def matches(pattern: str, *values: str | None) -> bool:
        return pattern == "*" or any(v is None or v == pattern for v in values)

    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) < 5 or not fields[4]:
            continue
        h, p, d, u, password = fields
        if (
            matches(h, *hosts)
            and matches(p, *str(port).split(","))
            and matches(d, dbname)
            and matches(u, user)
        ):
            out.append(password)
    return out


def redact_record(obj: object, redactor: Redactor) -> None:
    """Redact, in place, every string inside a result record (dataclasses, lists, dicts and their
    keys, tuples), so that no renderer can cut a secret in half before the final redaction pass
    sees it, and none that JSON escapes (quotes, non-ASCII) is missed by it."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _redacted(value, redactor)
            if new is not value:
                object.__setattr__(obj, f.name, new)  # frozen records too
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            obj[i] = _redacted(value, redactor)
    elif isinstance(obj, dict):
        for key, value in list(obj.items()):
            if isinstance(key, str) and redactor(key) != key:
                del obj[key]
                key = redactor(key)
            obj[key] = _redacted(value, redactor)


def _redacted(value: object, redactor: Redactor) -> object:
    """`value` redacted: a new string or tuple, or the same container redacted in place."""
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, tuple):
        return tuple(_redacted(v, redactor) for v in value)
    redact_record(value, redactor)
    return value


NAMEDATALEN = 64  # PostgreSQL cuts identifiers to NAMEDATALEN - 1 bytes


def secret_forms(secret: str) -> list[str]:
    """Every spelling of `secret` that can reach a message: as given; percent-encoded the ways
    libraries do; escaped the ways Python and JSON print strings (`repr()`, `%r` in logging, a
    dict, `json.dumps` with or without `ensure_ascii`: `\\u00e9`), `unicode_escape`; quoted
    for SQL (`'` or `"` doubled, as the server echoes a literal or an identifier); and each of
    those cut to 63 bytes, as the server cuts an identifier (NAMEDATALEN - 1)."""
    if not secret:
        return []
    forms = [secret]
    forms += [quote(secret, safe=""), quote_plus(secret), quote(secret, safe=" +")]
    forms.append(repr(secret)[1:-1])
    forms.append(json.dumps(secret)[1:-1])
    forms.append(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.append(secret.encode("unicode_escape").decode("ascii"))
    forms.append(secret.replace("'", "''"))
    forms.append(secret.replace('"', '""'))
    cut = []
    for form in forms:
        data = form.encode("utf-8")
        if len(data) >= NAMEDATALEN:
            cut.append(data[: NAMEDATALEN - 1].decode("utf-8", errors="ignore"))
    return list(dict.fromkeys(f for f in forms + cut if f))


_CUT_MARK = "\u2026"  # what every place that cuts text appends: `…`
_MIN_PREFIX = 4  # a secret's prefix this long, left just before a cut mark, is masked too


class Redactor:
    """Replaces every registered secret, in every form (`secret_forms`), by `***` in any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._masked: set[str] = set()  # every secret part, whatever its length
        self._pattern: re.Pattern[str] | None = None
        self._prefixes: re.Pattern[str] | None = None
        self.longest = 0
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        with self._lock:
            forms = [f for s in secrets if s and s.strip() for f in secret_forms(s)]
            # Very short values would mask ordinary words; the runner skips empty ones too.
            self._masked.update(f for f in forms if f.strip())
            self._secrets.update(f for f in forms if len(f) >= 3)
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
            self.longest = len(ordered[0]) if ordered else 0
            self._sorted = sorted(self._secrets)
            self._firsts = frozenset(x[0] for x in self._secrets)
            self._prefixes = None  # built when first needed (`_cut_heads`)

    @property
    def secrets(self) -> list[str]:
        """What is replaced in text: secrets of 3 characters or more (shorter ones would
        garble every message; the runner still masks them, see `to_mask`)."""
        return sorted(self._secrets, key=len, reverse=True)

    @property
    def to_mask(self) -> list[str]:
        """What `::add-mask::` registers with the runner: every secret part, in every form."""
        return sorted(self._masked, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text or self._pattern is None:
            return text
        text = self._pattern.sub(MASK, text)
        if _CUT_MARK in text:
            # A secret cut by someone who did not redact first: its head before the `…`.
            heads = self._cut_heads()
            if heads is not None:
                text = heads.sub(MASK, text)
        return text

    def _cut_heads(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._prefixes is None and self._secrets:
                heads = {s[:n] for s in self._secrets for n in range(_MIN_PREFIX, len(s))}
                ordered = sorted(heads, key=len, reverse=True)
                if ordered:
                    self._prefixes = re.compile(
                        "(?:" + "|".join(map(re.escape, ordered)) + ")(?=" + _CUT_MARK + ")"
                    )
            return self._prefixes

    def pending(self, text: str) -> int:
        """The length of the longest end of `text` that is the beginning of a secret (and not
        a whole one): what must wait for the next write before it can be shown."""
        if not self._secrets:
            return 0
        start = max(0, len(text) - self.longest + 1)
        for i in range(start, len(text)):
            if text[i] not in self._firsts:
                continue
            tail = text[i:]
            k = bisect.bisect_left(self._sorted, tail)
            if (
                k < len(self._sorted)
                and self._sorted[k].startswith(tail)
                and (
                    self._sorted[k] != tail
                    or (k + 1 < len(self._sorted) and self._sorted[k + 1].startswith(tail))
                )
            ):
                return len(tail)
        return 0

    def flush_point(self, text: str) -> int:
        """Where `text` may be cut for a flush: before the beginning of a secret at its end
        (`pending`), never inside a whole secret."""
        cut = len(text) - self.pending(text)
        if cut < len(text) and self._pattern is not None:
            start = max(0, len(text) - 2 * self.longest)
            for m in self._pattern.finditer(text, start):
                if m.start() < cut < m.end():
                    cut = m.end()
        return cut

    def split(self, text: str) -> tuple[str, str]:
        """Redact the part of `text` that no later text can change: `(done, rest)`, where `done`
        is redacted and `rest` (shorter than the longest secret) is still raw, as a secret may
        begin in it and end in what comes next. Linear in `len(text)`."""
        if self._pattern is None:
            return text, ""
        cut = len(text) - (self.longest - 1)
        if cut <= 0:
            return "", text
        out: list[str] = []
        pos = 0
        for m in self._pattern.finditer(text):
            if m.start() >= cut:
                break
            out.append(text[pos : m.start()])
            out.append(MASK)
            pos = m.end()
        end = max(pos, cut)
        out.append(text[pos:end])
        return "".join(out), text[end:]

    @overload
    def obj(self, value: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def obj(self, value: object) -> object: ...

    def obj(self, value: object) -> object:
        """Redact every string inside a JSON-like structure (a new one: dicts stay dicts)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value


_active = Redactor()


def activate(redactor: Redactor) -> None:
    """Make `redactor` the one `redact` and `cut` use (the run's, set up by the CLI)."""
    global _active
    _active = redactor


def redact(text: str) -> str:
    """`text` redacted by the run's redactor (see `activate`)."""
    return _active(text)


def cut(text: str, limit: int) -> str:
    """`text` redacted, then cut to `limit` characters with `…`: never the other way round, so
    that a secret crossing the cut is still recognised whole."""
    text = _active(text)
    return text if len(text) <= limit else text[: limit - 1] + _CUT_MARK


# --------------------------------------------------------------------------- workflow commands

ZWSP = "\u200b"  # not whitespace for the runner (.NET TrimStart) nor for Python
_WS = " \t\n\r\v\f\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def neutralise_line(line: str, *, complete: bool = True) -> str:
    """`line` made unable to start a workflow command: the runner reads a line as a command
    when, after leading white space, it starts with `::` (TryParseV2), or when it holds `##[`
    anywhere (the legacy TryParse). A zero-width space goes before the `::` and inside `##[`:
    the text reads the same. An incomplete line (more may follow) that could still become one
    (white space, or `:`, so far) is neutralised too."""
    if "##[" in line:
        line = line.replace("##[", "##" + ZWSP + "[")
    head = line.lstrip(_WS)
    if head.startswith("::") or (not complete and line and head in ("", ":")):
        line = ZWSP + line
    return line


def neutralise(text: str) -> str:
    """Every line of `text` neutralised (`neutralise_line`)."""
    if "::" not in text and "##[" not in text:
        return text
    lines = text.split("\n")
    return "\n".join(neutralise_line(ln) for ln in lines)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts, and neutralises workflow commands in, what is written to it.

    It wraps sys.stdout/sys.stderr at the edge, so that anything printed during the run (env.py's
    logging, Alembic's messages, a library's warning) is redacted too, and no line of it can
    start a workflow command (`neutralise_line`). Our own commands go through `write_command`.

    Linear time whatever the writes: they are kept in a list and handled when a line ends or
    `CHUNK` characters are waiting; a long line is passed on in pieces, keeping back only what
    could be the start of a secret (`Redactor.split`).
    """

    CHUNK = 1 << 16

    def __init__(self, target: TextIO, redactor: Redactor) -> None:
        self._target = target
        self._redactor = redactor
        self._parts: list[str] = []
        self._size = 0
        self._line_start = True  # what was passed on ended a line
        self._last = ""  # its last two characters (a `##[` across two pieces)
        self._lock = threading.RLock()

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        with self._lock:
            self._parts.append(s)
            self._size += len(s)
            if "\n" in s or self._size >= self.CHUNK:
                self._drain(final=False)
        return len(s)

    def _drain(self, *, final: bool, flushing: bool = False) -> None:
        if not self._parts:
            return
        text = "".join(self._parts) if len(self._parts) > 1 else self._parts[0]
        end = text.rfind("\n") + 1
        if final:
            out, rest = self._redactor(text), ""
        elif flushing:
            # Everything but the beginning of a secret that the next write may complete.
            cut = self._redactor.flush_point(text)
            out, rest = self._redactor(text[:cut]), text[cut:]
        elif end and len(text) - end < self.CHUNK:
            # Whole lines now (a secret never spans a line); the unfinished one waits.
            out, rest = self._redactor(text[:end]), text[end:]
        else:
            out, rest = self._redactor.split(text)
        self._parts = [rest] if rest else []
        self._size = len(rest)
        if out:
            self._target.write(self._neutralised(out))

    def _neutralised(self, out: str) -> str:
        lines = out.split("\n")
        for i, line in enumerate(lines):
            if i == 0 and not self._line_start:
                # The rest of a line already begun: a `##[`, perhaps split across two pieces.
                joined = (self._last + line).replace("##[", "##" + ZWSP + "[")
                lines[i] = joined[len(self._last) :]
            elif line:
                lines[i] = neutralise_line(line, complete=i < len(lines) - 1)
        self._line_start = out.endswith("\n")
        self._last = (self._last + out)[-2:]
        return "\n".join(lines)

    def write_command(self, line: str, *, redact: bool = True) -> None:
        """Our own workflow command `line` (one line, its data escaped), on a line of its own:
        redacted (`redact=False` for `::add-mask::`), never neutralised."""
        with self._lock:
            self._drain(final=True)
            prefix = "" if self._line_start else "\n"
            self._target.write(prefix + (self._redactor(line) if redact else line) + "\n")
            self._line_start = True
            self._last = "\n"
            self._target.flush()

    def flush(self) -> None:
        """Pass on what was written, but for the beginning of a secret cut by the writes
        (env.py flushing after each piece): it waits for the rest (`drain` at the end)."""
        with self._lock:
            self._drain(final=False, flushing=True)
            self._target.flush()

    def drain(self) -> None:
        """Pass on everything, at the end of the run."""
        with self._lock:
            self._drain(final=True)
            self._target.flush()

    def close(self) -> None:
        self.drain()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True
