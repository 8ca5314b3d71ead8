"""Every code block of README.md and docs/*.md runs, as a newcomer would run it.

The rules (one test per block, named ``file:line`` of its opening fence):

* ``python`` blocks of one file run in order in one namespace, like a doctest session, with
  ``$VECORM_DATABASE_URL`` (and ``$DATABASE_URL``) pointing at a fresh database made for that
  file, ``$HOME`` and the working directory a temporary directory of its own. Running one
  block alone (``-k``) runs the blocks before it first. A block holding ``>>>`` prompts is
  a doctest: its printed output and exceptions are compared.
* ``bash`` / ``sh`` / ``console`` blocks run each command (``$ `` lines in ``console``; the
  other lines there are output) in that directory, with this venv's ``bin`` first on
  ``PATH``; only ``vecorm``, ``python`` and ``alembic`` commands are run, and each must exit 0.
  A block that installs packages or needs what this machine lacks is marked, never run.
* ``sql`` blocks run against the file's database in a transaction that is rolled back. SQL
  that only sketches what vecorm emits (placeholders, elisions) is marked skip, naming the
  test that checks the real statement.
* Output and illustrations use a language that is not run (``text``, ``ini``...). A block
  without a language fails: say what it is.
* Markers are HTML comments right before a block (see ``markdown_blocks``):
  ``<!-- docs-test: skip (reason) -->`` reports the block skipped with that reason,
  ``<!-- docs-test: slow -->`` marks its test slow, and ``<!-- docs-test: setup ... -->``
  holds hidden Python run before it. An unmarked block that cannot run fails.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import doctest
import gc
import inspect
import io
import os
import shlex
import subprocess
import sys
import traceback
import types
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from tests.e2e.markdown_blocks import Block, blocks

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "shell", "console"}
SQL = {"sql"}
RUNNABLE = PYTHON | SHELL | SQL
#: Commands a shell block may run; anything else must be marked.
COMMANDS = {"vecorm", "python", "python3", "alembic"}
BIN = Path(sys.executable).parent


def _collect() -> list[Any]:
    params = []
    for path in FILES:
        for block in blocks(path):
            if block.lang and block.lang not in RUNNABLE:
                continue
            marks = [pytest.mark.slow] if block.slow else []
            name = f"{path.relative_to(ROOT)}:{block.line}"
            params.append(pytest.param(block, id=name, marks=marks))
    return params


@dataclass
class FileSession:
    """One markdown file's run: its database, directory, namespace and blocks done so far."""

    path: Path
    url: str
    directory: Path
    namespace: dict[str, Any]
    done: dict[int, str] = field(default_factory=dict)  # line -> "ok" | "failed" | "skipped"

    def earlier_trouble(self, line: int) -> str:
        trouble = [
            f"{n} {state}" for n, state in sorted(self.done.items()) if n < line and state != "ok"
        ]
        return f" (earlier blocks of this file: {', '.join(trouble)})" if trouble else ""


@pytest.fixture(scope="session")
def docs_sessions(
    vecorm_server: Any, vecorm_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, FileSession]]:
    from vecorm.testing.server import fresh_database

    sessions: dict[Path, FileSession] = {}
    with ExitStack() as stack:

        class Lazy(dict[Path, FileSession]):
            def __missing__(self, path: Path) -> FileSession:
                url = stack.enter_context(fresh_database(vecorm_server, vecorm_template))
                module = types.ModuleType(f"docs_{path.stem.replace('-', '_')}")
                stack.callback(_release, module.__dict__)
                sys.modules[module.__name__] = module
                stack.callback(sys.modules.pop, module.__name__, None)
                session = FileSession(
                    path,
                    url.render_as_string(hide_password=False),
                    tmp_path_factory.mktemp(path.stem),
                    module.__dict__,
                )
                self[path] = session
                return session

        sessions = Lazy()
        yield sessions


def _release(namespace: dict[str, Any]) -> None:
    """Drop what the blocks left (sessions, connections) while their database still exists.

    Left to the garbage collector, a connection of a dropped database is finalized at a random
    later point, logs its ``AdminShutdown``, and the import that logging does can land inside
    an ``ast.parse`` of pytest's assertion rewriter: CPython 3.11 then fails that parse with
    "AST constructor recursion depth mismatch" (its AST state is global, fixed in 3.11.8).
    """
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    for value in list(namespace.values()):
        if isinstance(value, Session | Connection):
            value.close()
    _dispose_engines(namespace)
    namespace.clear()
    with warnings.catch_warnings():
        # A connection an example's unclosed session held is closed here, by its finalizer.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _dispose_engines(namespace: dict[str, Any]) -> None:
    """Engines a block left open would keep the file's database from being dropped."""
    for engine in _engines(namespace):
        engine.dispose()


@contextmanager
def _environment(session: FileSession) -> Iterator[None]:
    saved = dict(os.environ)
    cwd = Path.cwd()
    os.environ.update(
        VECORM_DATABASE_URL=session.url,
        DATABASE_URL=session.url,
        HOME=str(session.directory),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    os.environ.pop("OPENAI_API_KEY", None)
    os.chdir(session.directory)
    sys.path.insert(0, str(session.directory))
    try:
        yield
    finally:
        sys.path.remove(str(session.directory))
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def _run_python(block: Block, session: FileSession) -> None:
    for setup in block.setup:
        exec(compile(setup, f"{block.path.name}:{block.line} (setup)", "exec"), session.namespace)
    name = f"{block.path.name}:{block.line}"
    if any(line.lstrip().startswith(">>>") for line in block.code.splitlines()):
        test = doctest.DocTestParser().get_doctest(
            block.code, session.namespace, name, str(block.path), block.line
        )
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=out.write, clear_globs=False)
        if runner.failures:
            raise AssertionError(out.getvalue())
        return
    code = "\n" * block.line + block.code  # tracebacks give the markdown's line numbers
    before = _engines(session.namespace)
    try:
        compiled = compile(code, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if compiled.co_flags & inspect.CO_COROUTINE:  # top-level await, as in asyncio's REPL
            asyncio.run(eval(compiled, session.namespace))
        else:
            exec(compiled, session.namespace)
    finally:
        # An engine the block replaced (``engine = ...`` again) would leak its connections.
        kept = {id(engine) for engine in _engines(session.namespace)}
        for engine in before:
            if id(engine) not in kept:
                engine.dispose()


def _engines(namespace: dict[str, Any]) -> list[Any]:
    from sqlalchemy.engine import Engine

    return [value for value in namespace.values() if isinstance(value, Engine)]


def _commands(block: Block) -> list[str]:
    lines = block.code.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    commands: list[str] = []
    pending = ""
    for line in lines:
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending.strip())
        pending = ""
    return commands


def _run_shell(block: Block, session: FileSession) -> None:
    for setup in block.setup:
        exec(compile(setup, f"{block.path.name}:{block.line} (setup)", "exec"), session.namespace)
    for command in _commands(block):
        program = shlex.split(command, comments=True)[0]
        if program not in COMMANDS:
            pytest.fail(
                f"{program!r} is not a command this harness runs ({sorted(COMMANDS)}); mark the "
                "block <!-- docs-test: skip (why) --> if it cannot run here",
                pytrace=False,
            )
        result = subprocess.run(
            command,
            shell=True,
            cwd=session.directory,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert result.returncode == 0, f"$ {command}\nexit {result.returncode}\n{output}"


def _run_sql(block: Block, session: FileSession) -> None:
    for setup in block.setup:
        exec(compile(setup, f"{block.path.name}:{block.line} (setup)", "exec"), session.namespace)
    engine = create_engine(session.url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(block.code)
            conn.rollback()
    finally:
        engine.dispose()


RUNNERS = {
    **dict.fromkeys(PYTHON, _run_python),
    **dict.fromkeys(SHELL, _run_shell),
    **dict.fromkeys(SQL, _run_sql),
}


def _execute(block: Block, session: FileSession) -> None:
    """Run ``block``, recording its outcome; raises what it raised."""
    if block.skip is not None:
        session.done[block.line] = "skipped"
        pytest.skip(block.skip)
    try:
        with _environment(session):
            RUNNERS[block.lang](block, session)
    except BaseException:
        session.done[block.line] = "failed"
        raise
    session.done[block.line] = "ok"


@pytest.mark.parametrize("block", _collect())
def test_block(block: Block, docs_sessions: dict[Path, FileSession]) -> None:
    if not block.lang:
        pytest.fail(
            "a block without a language: tag it (python, bash, console, sql to run it; text "
            "or another tag for output and illustrations)",
            pytrace=False,
        )
    session = docs_sessions[block.path]
    for earlier in blocks(block.path):
        if earlier.line >= block.line:
            break
        if earlier.line in session.done or earlier.lang not in RUNNABLE or earlier.skip:
            continue
        with contextlib.suppress(Exception):  # recorded; reported by its own test
            _execute(earlier, session)
    detail = ""
    try:
        _execute(block, session)
    except pytest.skip.Exception:
        raise
    except Exception as error:
        detail = "".join(traceback.format_exception(error, limit=-8))
    if detail:
        where = f"{block.path.name}:{block.line}"
        pytest.fail(
            f"{where} failed{session.earlier_trouble(block.line)}:\n{detail}", pytrace=False
        )
