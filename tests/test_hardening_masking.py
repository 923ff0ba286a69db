"""Issue 15, points 4, 5 and 9, the parts that need no server: the redacting stream gives the
same text whatever the writes (chunk boundaries, flushes), masks every form of a secret, can't
be made to print a workflow command, and finds the password libpq would use. The speed is
measured in `make bench` (bench/masking.py), not here; the end-to-end proofs against a real
PostgreSQL are tests/test_hardening_secrets.py and tests/test_hardening_commands.py."""

from __future__ import annotations

import io
import json
import random

import pytest

from deployer.redact import (
    MASK,
    RedactingStream,
    Redactor,
    activate,
    cut,
    libpq_passwords,
    neutralise,
    secret_forms,
    url_secrets,
)
from tests.helpers.action import workflow_commands

SECRETS = ["s3cré t-p@ss'w\"rd\\", "abcabcX", "webhookToken42", "x" * 70 + "é" * 10]


def _through(chunks: list[str], redactor: Redactor, *, flush_each: bool = False) -> str:
    out = io.StringIO()
    stream = RedactingStream(out, redactor)
    for c in chunks:
        stream.write(c)
        if flush_each:
            stream.flush()
    stream.drain()
    return out.getvalue()


def _text(rng: random.Random) -> str:
    parts = []
    for _ in range(400):
        roll = rng.random()
        if roll < 0.15:
            parts.append(rng.choice(SECRETS))
        elif roll < 0.2:
            parts.append(rng.choice(SECRETS)[: rng.randint(1, 6)])  # a harmless beginning
        elif roll < 0.25:
            parts.append("\n")
        else:
            parts.append("".join(rng.choice("abcxé -:#[") for _ in range(rng.randint(1, 30))))
    return "".join(parts)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("flush_each", [False, True])
def test_chunked_writes_give_what_one_write_gives(seed: int, flush_each: bool) -> None:
    rng = random.Random(seed)
    redactor = Redactor(SECRETS)
    text = _text(rng)
    whole = _through([text], redactor)
    chunks, i = [], 0
    while i < len(text):
        n = rng.choice([1, 2, 3, 7, 64, 100, 5000])
        chunks.append(text[i : i + n])
        i += n
    assert _through(chunks, redactor, flush_each=flush_each) == whole
    for secret in SECRETS:
        assert secret not in whole


def test_a_long_line_is_passed_on_in_pieces_with_secrets_across_them() -> None:
    redactor = Redactor(SECRETS)
    out = io.StringIO()
    stream = RedactingStream(out, redactor)
    piece = "y" * 97 + SECRETS[0][:3]
    rest = SECRETS[0][3:]
    for _ in range(5000):  # 500,000 characters, no newline: passed on before the end
        stream.write(piece)
        stream.write(rest)
    assert len(out.getvalue()) > 100_000  # not all kept until a newline
    stream.drain()
    assert SECRETS[0] not in out.getvalue() and out.getvalue().count(MASK) == 5000


def test_every_form_is_masked() -> None:
    password = "Pä$$'w\"o\\rd:" + "z" * 60
    redactor = Redactor([password])
    samples = [
        repr(password),
        repr({"p": password}),
        json.dumps(password),
        json.dumps({"p": password}, ensure_ascii=False),
        password.encode("unicode_escape").decode(),
        'relation "' + password.encode()[:63].decode("utf-8", "ignore") + '" already exists',
        f"value='{password.replace(chr(39), chr(39) * 2)}'",
    ]
    for sample in samples:
        shown = redactor(sample)
        assert "zzzzzzzz" not in shown, (sample, shown)
    assert set(secret_forms(password)) <= set(redactor.to_mask)


def test_a_secret_cut_without_redacting_first_shows_no_beginning() -> None:
    redactor = Redactor(["hunter2-very-secret"])
    assert redactor("blocked by: SELECT 'hunter2-ve…") == f"blocked by: SELECT '{MASK}…"
    activate(redactor)
    try:
        assert "hunter" not in cut("x" * 70 + " hunter2-very-secret and more", 80)
    finally:
        activate(Redactor())


def test_no_line_of_data_can_start_a_workflow_command() -> None:
    hostile = (
        "::error title=HIJACK::fake\n  ::add-mask::x\n\t::stop-commands::pwned\n"
        "::set-output name=a::b\nok ##[error]legacy\n::warning::w"
    )
    out = io.StringIO()
    stream = RedactingStream(out, Redactor())
    for ch in hostile:  # one character at a time, flushed: the worst case
        stream.write(ch)
        stream.flush()
    stream.write_command("::notice::ours")
    stream.drain()
    found = workflow_commands(out.getvalue())
    assert [(c.name, c.data) for c in found] == [("notice", "ours")]
    assert "##[" not in out.getvalue()
    assert workflow_commands(neutralise(hostile)) == []


@pytest.mark.parametrize(
    ("url", "line", "used"),
    [
        ("postgresql://app@db.example:6543/prod", "db.example:6543:prod:app:pw-one", True),
        ("postgresql://app@db.example:6543/prod", "*:*:*:app:pw-two", True),
        ("postgresql://app@db.example:6543/prod", "other:6543:prod:app:pw-three", False),
        ("postgresql://app@db.example/prod", "db.example:5432:prod:app:pw-four", True),
        ("postgresql://app@/prod?host=/run/pg", "localhost:5432:prod:app:pw-five", True),
        ("postgresql://app@db.example/prod", "db.example:5432:prod:other:pw-six", False),
        ("postgresql://app@db.example/prod", r"db.example:5432:prod:app:pw\:with\\esc", True),
    ],
)
def test_the_pgpass_entry_libpq_would_use_is_a_secret(
    tmp_path, url: str, line: str, used: bool
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text("# comment\n" + line + "\n")
    found = libpq_passwords(url, {"PGPASSFILE": str(passfile)})
    password = line.split(":", 4)[4].replace("\\:", ":").replace("\\\\", "\\")
    assert (password in found) is used, found


def test_pgpassword_and_the_url_query_are_secrets() -> None:
    assert libpq_passwords("postgresql://a@h/d", {"PGPASSWORD": "from-env-7"}) == ["from-env-7"]
    assert "q%C3%A9ry-pw" in url_secrets("postgresql://a@h/d?password=q%C3%A9ry-pw")
    assert "qéry-pw" in url_secrets("postgresql://a@h/d?sslmode=require&password=q%C3%A9ry-pw")
