"""Secret redaction: every secret the run knows is replaced before text leaves the process.

The GitHub runner masks values registered with `::add-mask::`, but only in its own log; our JSON
report, files written outside GitHub, Slack messages and the terminal need the same care, so all
text passes through one `Redactor`.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterable
from typing import Any, TextIO, overload
from urllib.parse import quote, quote_plus, unquote, urlsplit

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


class Redactor:
    """Replaces every registered secret by `***` in any text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._masked: set[str] = set()  # every secret part, whatever its length
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        with self._lock:
            # Very short values would mask ordinary words; the runner skips empty ones too.
            self._masked.update(s for s in secrets if s and s.strip())
            self._secrets.update(s for s in secrets if s and len(s) >= 3)
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @property
    def secrets(self) -> list[str]:
        """What is replaced in text: secrets of 3 characters or more (shorter ones would
        garble every message; the runner still masks them, see `to_mask`)."""
        return sorted(self._secrets, key=len, reverse=True)

    @property
    def to_mask(self) -> list[str]:
        """What `::add-mask::` registers with the runner: every secret part."""
        return sorted(self._masked, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text or self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

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


class RedactingStream(io.TextIOBase):
    """A text stream that redacts whole lines before passing them on.

    It wraps sys.stdout/sys.stderr at the edge, so that anything printed during the run (env.py's
    logging, Alembic's messages, a library's warning) is redacted too.
    """

    def __init__(self, target: TextIO, redactor: Redactor) -> None:
        self._target = target
        self._redactor = redactor
        self._buffer = ""

    def write(self, s: str) -> int:
        self._buffer += s
        if "\n" in self._buffer:
            head, _, self._buffer = self._buffer.rpartition("\n")
            self._target.write(self._redactor(head + "\n"))
        return len(s)

    def flush(self) -> None:
        if self._buffer:
            self._target.write(self._redactor(self._buffer))
            self._buffer = ""
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True
