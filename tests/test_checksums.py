"""Code checksums: what cannot change behaviour does not change the checksum; code does."""

from __future__ import annotations

import ast
import io
import random
import shutil
import subprocess
import tokenize
from pathlib import Path

import pytest

from deployer import checksums
from deployer.checksums import PREFIX, code_checksum, raw_checksum
from tests.helpers import REPO, AlembicProject, Database, GitHubRunner

REVISION = '''\
"""add the audit table

Revision ID: 0005_audit
Revises: 0004_agents
"""
from alembic import op
import sqlalchemy as sa

revision = "0005_audit"
down_revision = "0004_agents"


def upgrade():
    """Create it."""
    # a comment
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("what", sa.Text, server_default='none'),
    )
    op.execute(f"COMMENT ON TABLE audit IS '{revision}'")


def downgrade():
    op.drop_table("audit")
'''


def checksum_of(tmp_path: Path, text: str | bytes, name: str = "r.py") -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return code_checksum(path)


SAME = {
    "crlf": lambda s: s.replace("\n", "\r\n"),
    "bom": lambda s: "\ufeff" + s,
    "trailing-whitespace": lambda s: s.replace("\n", "   \n"),
    "comment-edited": lambda s: s.replace("# a comment", "# another comment, longer"),
    "comment-added": lambda s: s.replace("def downgrade():", "# why\ndef downgrade():  # x"),
    "module-docstring": lambda s: s.replace("add the audit table", "add the audit table (fixed)"),
    "function-docstring": lambda s: s.replace('"""Create it."""', '"""Create the table."""'),
    "docstring-removed": lambda s: s.replace('    """Create it."""\n', ""),
    "reformatted": lambda s: s.replace(
        'op.create_table(\n        "audit",\n', 'op.create_table("audit",\n    '
    ),
    "quotes": lambda s: s.replace("server_default='none'", 'server_default="none"'),
    "blank-lines": lambda s: s.replace("\n\n\ndef", "\n\n\n\n\ndef"),
}
DIFFERENT = {
    "table-name": lambda s: s.replace('"audit",\n', '"audits",\n'),
    "string-value": lambda s: s.replace("'none'", "'None'"),
    "f-string": lambda s: s.replace("IS '{revision}'", "IS '{down_revision}'"),
    "statement-added": lambda s: s.replace(
        '    op.drop_table("audit")', '    op.drop_table("audit")\n    op.execute("SELECT 1")'
    ),
    "indentation": lambda s: s.replace(
        '    op.execute(f"COMMENT', '    if True:\n        pass\n    op.execute(f"COMMENT'
    ).replace('    op.execute(f"COMMENT', '    op.execute(f"COMMENT'),
    "dedented-statement": lambda s: s.replace(
        "def downgrade():\n    op.drop_table", "def downgrade():\n    pass\nop.drop_table"
    ),
    "non-docstring-string": lambda s: s.replace(
        '    """Create it."""\n', '    """Create it."""\n    "a statement, not a docstring"\n'
    ),
}


@pytest.mark.parametrize("change", SAME)
def test_layout_changes_keep_the_checksum(tmp_path: Path, change: str) -> None:
    changed = SAME[change](REVISION)
    assert changed != REVISION
    assert checksum_of(tmp_path, changed) == checksum_of(tmp_path, REVISION)


@pytest.mark.parametrize("change", DIFFERENT)
def test_code_changes_change_the_checksum(tmp_path: Path, change: str) -> None:
    changed = DIFFERENT[change](REVISION)
    assert changed != REVISION
    assert checksum_of(tmp_path, changed) != checksum_of(tmp_path, REVISION)


def test_checksums_are_marked_and_raw_hash_differs(tmp_path: Path) -> None:
    value = checksum_of(tmp_path, REVISION)
    assert value.startswith(PREFIX)
    assert value.removeprefix(PREFIX) != raw_checksum(REVISION.encode())


def test_a_file_that_is_not_python_falls_back_to_its_bytes(tmp_path: Path) -> None:
    broken = "def upgrade(:\n"
    assert checksum_of(tmp_path, broken) == checksum_of(tmp_path, broken)
    assert checksum_of(tmp_path, broken) != checksum_of(tmp_path, broken + " ")


SQL = "-- create\nCREATE TABLE t (\n  id int, -- key\n  v text DEFAULT 'a  b'\n);\n/* done */\n"


def test_sql_ignores_comments_and_whitespace_but_not_literals(tmp_path: Path) -> None:
    base = checksum_of(tmp_path, SQL, "m.sql")
    relaid = "CREATE TABLE t (id int,\r\n v text DEFAULT 'a  b');"
    assert checksum_of(tmp_path, relaid, "m.sql") == base
    assert checksum_of(tmp_path, SQL.replace("'a  b'", "'a b'"), "m.sql") != base
    assert checksum_of(tmp_path, SQL.replace("int", "bigint"), "m.sql") != base
    assert checksum_of(tmp_path, "SELECT 'unterminated", "m.sql").startswith(PREFIX)


def _other_pythons() -> list[str]:
    """Python 3.12 and 3.13 where this machine has them (pyenv's, or on PATH) and they run."""
    found = {}
    for minor in ("3.12", "3.13"):
        candidates = sorted(Path.home().glob(f".pyenv/versions/{minor}*/bin/python{minor}"))
        candidates += [Path(p) for p in [shutil.which(f"python{minor}")] if p]
        for exe in candidates:
            ok = subprocess.run([str(exe), "-c", "pass"], capture_output=True).returncode == 0
            if ok:
                found[minor] = str(exe)
                break
    return list(found.values())


OTHER_PYTHONS = _other_pythons()
MIGRATIONS = sorted((REPO / "migrations" / "versions").glob("*.py"))


@pytest.mark.skipif(not OTHER_PYTHONS, reason="no Python 3.12/3.13 on this machine")
@pytest.mark.parametrize("python", OTHER_PYTHONS, ids=lambda p: Path(p).name)
def test_the_same_file_gives_the_same_checksum_on_other_pythons(tmp_path: Path, python: str):
    """The token stream, not ast.dump: stable across interpreters (3.12 splits f-strings into
    parts; they are put back together). Every revision of the reference schema and a file with
    nested f-strings, on this Python and another one."""
    files = list(MIGRATIONS)
    extra = tmp_path / "fstrings.py"
    extra.write_text(
        'x = 1\ny = f"a{x!r:>{x}}b" f\'{f"{x}"}\' "plain"\nz = rb"\\d" b"x"\n'
        'def f():\n    """doc"""\n    return f"""{x}\n"""\n'
    )
    files.append(extra)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import importlib.util as u;"
        "s = u.spec_from_file_location('c', sys.argv[2]); m = u.module_from_spec(s);"
        "s.loader.exec_module(m);"
        "print('\\n'.join(m.code_checksum(p) for p in sys.argv[3:]))"
    )
    proc = subprocess.run(
        [
            python,
            "-c",
            script,
            str(REPO),
            str(REPO / "deployer" / "checksums.py"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    here = [code_checksum(p) for p in files]
    assert proc.stdout.split() == here
    assert [code_checksum(p, compiles=True) for p in files] == here


# --------------------------------------------------------------------------- the fast path of 3.11

#: Files where the C tokenizer of 3.11 and `tokenize` could part: line endings, non-ASCII
#: columns, every shape of first statement that is (or is not) a docstring.
EDGE_CASES = {
    "crlf-fstring": b'x = 1\r\ny = f"""a {x}\r\nb"""\r\n\r\ndef f():\r\n    """doc"""\r\n    return y\r\n',
    "crlf-strings": b'"""mod\r\ndoc"""\r\nx = """a\r\nb"""\r\ny = \'c\\\r\nd\'\r\n',
    "lone-cr": b'x = 1\ry = "a"\n',
    "non-ascii-one-liner": 'def été(): "doc"\nclass Ä: "é"; x = 1\n'.encode(),
    "non-ascii-docstring-then-code": 'def f():\n    """éé"""; y = 2  # ç\n    return 1\n'.encode(),
    "parenthesised": b'("mod" "doc")\ndef f():\n    (\n        "a"  # c\n        "b"\n    )\n',
    "not-docstrings": b'b"bytes"\ndef f():\n    f"{1}"\ndef g():\n    "a" + "b"\ndef h():\n    "a".strip()\n'
    b'def i():\n    ("a",)\ndef j():\n    "a"("b")\ndef k():\n    u"u" "v"\n',
    "lambda-annotation": b'def f() -> lambda: 1: "doc"\nclass C(object, metaclass=type):\n    "d"\n',
    "nested-and-async": b'class A:\n    """a"""\n    async def f(self):\n        """f"""\n'
    b'        if 1:\n            def g():\n                """g"""\n        try:\n            pass\n'
    b'        except Exception:\n            class E:\n                "e"\n',
    "comments-first": b'#!/usr/bin/env python\n# -*- coding: latin-1 -*-\n\n"""doc \xe9"""\nx = 1',
    "bom": b'\xef\xbb\xbf"""doc"""\nx = 1\n',
    "tabs-and-formfeed": b'if 1:\n\tx = 1\n\x0c\ndef f():\n\t"""d"""\n\treturn 2\n',
    "no-newline-at-end": b'def f():\n    """d"""',
    "trailing-blank": b"x = 1\n   ",
    "empty": b"",
    "combining-marks": 'עִברִית = 1\ndef f():\n    """דֶּה"""\n'.encode(),
    "only-comments": b"# nothing\n",
}


def _stdlib_sample() -> list[Path]:
    return sorted(Path(ast.__file__).parent.glob("*.py"))[::5]


@pytest.mark.skipif(checksums._TokenizerIter is None, reason="tokenize is the only path here")
@pytest.mark.parametrize(
    "name", [*EDGE_CASES, *(p.name for p in _stdlib_sample()), *(p.name for p in MIGRATIONS)]
)
def test_the_fast_path_gives_what_tokenize_and_the_ast_give(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """On 3.11 the checksum reads the C tokenizer's tokens, and with `compiles` finds the
    docstrings from them: the same canonical text as `tokenize` and the AST give."""
    files = {p.name: p for p in [*_stdlib_sample(), *MIGRATIONS]}
    data = EDGE_CASES[name] if name in EDGE_CASES else files[name].read_bytes()
    fast = checksums.python_canonical(data)
    compiled = checksums.python_canonical(data, compiles=True)
    monkeypatch.setattr(checksums, "_TokenizerIter", None)
    slow = checksums.python_canonical(data)
    assert fast == slow
    assert compiled == slow


def _random_program(rng: random.Random, depth: int = 0) -> str:
    """A few statements mixing what decides a docstring: one-line and block bodies, `;`,
    parenthesised and implicitly joined strings, f-strings and bytes first, a lambda in a return
    annotation, non-ASCII names, strings and comments before and after."""
    names = ["x", "é", "Ä", "abc", "ñu"]
    strings = ['"doc"', "'d'", '"""a\nb"""', '"é"', "'''ç'''", 'f"{x}"', 'b"b"', 'r"\\d"']
    strings += ['("a" "b")', '(\n"a"\n"é")', '"a" "b"', 'u"u"']
    pad = "    " * depth
    lines = []
    for _ in range(rng.randint(1, 3 if depth else 5)):
        k = rng.random()
        if k < 0.25:
            tail = rng.choice(["", "; x = 1", "  # cé", ";"])
            lines.append(f"{pad}{rng.choice(strings)}{tail}\n")
        elif k < 0.45 and depth < 3:
            header = rng.choice(
                [
                    f"def {rng.choice(names)}():",
                    f"class {rng.choice(names)}:",
                    "def f() -> lambda: 1:",
                    "if 1:",
                    f"async def {rng.choice(names)}(a={rng.choice(strings)}):",
                ]
            )
            if rng.random() < 0.3:
                one_line = f"{header} {rng.choice(strings)}{rng.choice(['', '; y = 2'])}"
                lines.append(f"{pad}{one_line}\n")
            else:
                lines.append(f"{pad}{header}\n{_random_program(rng, depth + 1)}")
        elif k < 0.6:
            lines.append(f"{pad}{rng.choice(names)} = {rng.choice(strings)}\n")
        else:
            lines.append(f"{pad}{rng.choice(names)} = {rng.randint(0, 9)}  # ü\n")
    return "".join(lines)


@pytest.mark.skipif(checksums._TokenizerIter is None, reason="tokenize is the only path here")
def test_the_one_pass_text_is_what_tokenize_and_the_ast_give_on_random_programs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_c_canonical` (one pass, docstrings found as the tokens go by) against `tokenize` and
    the AST, on programs built to hit every rule that decides a docstring, LF and CRLF."""
    rng = random.Random(20261206)
    programs = []
    while len(programs) < 600:
        source = _random_program(rng)
        for data in (source.encode(), source.replace("\n", "\r\n").encode()):
            try:
                compile(data, "random", "exec")
            except SyntaxError:
                continue
            programs.append(data)
    one_pass = [checksums.python_canonical(data, compiles=True) for data in programs]
    monkeypatch.setattr(checksums, "_TokenizerIter", None)
    slow = [checksums.python_canonical(data) for data in programs]
    assert one_pass == slow
    # The programs do hit the rules: many lose a docstring, many keep a leading string.
    tokens = [
        sum(t.type == tokenize.STRING for t in tokenize.tokenize(io.BytesIO(data).readline))
        for data in programs
    ]
    kept = [sum(line.startswith("STRING ") for line in text.split("\n")) for text in slow]
    dropped = sum(k < n for k, n in zip(kept, tokens, strict=True))
    assert 100 < dropped < len(programs) - 100


# --------------------------------------------------------------------------- in the deploy history

TABLE_A = "op.create_table('a', sa.Column('id', sa.Integer, primary_key=True))"


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda s: s.replace("\n", "\r\n"), id="crlf-checkout"),
        pytest.param(
            lambda s: s.replace('"""0001_a"""', '"""0001_a: the first table"""'), id="docstring"
        ),
        pytest.param(lambda s: s + "\n# a note for readers\n", id="comment"),
        pytest.param(lambda s: s.replace("primary_key=True", "primary_key = True"), id="spacing"),
    ],
)
def test_layout_edits_of_an_applied_revision_never_block(
    project: AlembicProject, database: Database, deploy, edit
) -> None:
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    path.write_bytes(edit(path.read_text()).encode())
    for command in ("status", "plan"):
        run = deploy(project, command=command)
        assert run.returncode == 0, (command, run.output)
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    run = deploy(project)
    assert run.returncode == 0, run.output
    assert database.version() == {"0002_b"}


def test_a_code_edit_fails_status_plan_and_deploy_alike(
    project: AlembicProject, database: Database, github: GitHubRunner, deploy
) -> None:
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    path.write_text(path.read_text().replace("primary_key=True", "primary_key=False"))
    errors = {}
    for command in ("status", "plan", "deploy"):
        run = deploy(project, command=command)
        assert run.returncode == 1, (command, run.output)
        errors[command] = github.outputs()["error"]
    assert all("0001_a" in e and "changed since they ran" in e for e in errors.values()), errors
    assert len(set(errors.values())) == 1, errors


def test_a_history_of_an_older_version_is_compared_by_bytes_and_rekeyed(
    project: AlembicProject, database: Database, deploy
) -> None:
    """Rows written before code checksums existed (no column): compared by their bytes, re-keyed
    with the code checksum while the bytes still match, so later layout edits pass."""
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    database.execute("ALTER TABLE db_deploy.db_deploy_history DROP COLUMN code_checksum")
    project.add("0002_b", "op.create_table('b', sa.Column('id', sa.Integer))")
    assert deploy(project).returncode == 0  # old table: the column is added, 0001_a re-keyed
    keys = database.rows(
        "SELECT revision, code_checksum FROM db_deploy.db_deploy_history ORDER BY id"
    )
    assert [r[0] for r in keys] == ["0001_a", "0002_b"] and all(r[1] for r in keys)
    path.write_bytes(path.read_text().replace("\n", "\r\n").encode())
    assert deploy(project, command="plan").returncode == 0


def test_an_old_row_whose_bytes_changed_is_still_an_edit(
    project: AlembicProject, database: Database, deploy
) -> None:
    path = project.add("0001_a", TABLE_A)
    assert deploy(project).returncode == 0
    database.execute("UPDATE db_deploy.db_deploy_history SET code_checksum = NULL")
    path.write_text(path.read_text() + "\n# edited after an older version recorded it\n")
    run = deploy(project, command="plan")
    assert run.returncode == 1 and "changed since they ran" in run.output
