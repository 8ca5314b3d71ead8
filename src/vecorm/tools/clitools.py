"""What the ``vecorm`` commands share: finding the user's model, an embedder, a database, and
turning user mistakes into one line plus a hint.

::

    model = load_model("myapp.models:Document")      # imports from the current directory too
    embedder = load_embedder("local")                  # or "hashing", "openai", "pkg.mod:obj"
    raise UserError("no such table documents", hint="run `alembic upgrade head` first")
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, NoReturn

import click
import psycopg
from sqlalchemy import URL, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from vecorm.embedding.embedders.base import Embedder
from vecorm.engine import create_engine, normalize_url
from vecorm.errors import ConfigurationError, DimensionMismatch, VecormError

__all__ = [
    "UserError",
    "connect",
    "load_embedder",
    "load_model",
    "load_passage_model",
    "parse_url",
    "require_url",
    "user_error",
]

URL_HINT = (
    "pass --database-url postgresql://user:password@host:5432/dbname or set $VECORM_DATABASE_URL"
)
#: Server errors that mean "the schema is not there (or not yours)", not a bug in vecorm.
_MISSING_SCHEMA = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedObject,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.InsufficientPrivilege,
)
CONNECT_HINT = "check that the server is running and that the URL's host, port and user are right"


class UserError(click.ClickException):
    """A mistake the user can fix: printed as ``Error: <message>`` and ``hint: <hint>``, exit 1."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        stream = file if file is not None else sys.stderr
        click.echo(f"Error: {self.format_message()}", file=stream)
        if self.hint:
            click.echo(f"hint: {self.hint}", file=stream)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def user_error(exc: BaseException) -> UserError | None:
    """The :class:`UserError` for an exception caused by the user's input, else ``None``."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, DimensionMismatch):
        return UserError(
            _first_line(exc), hint="the embedder and the column must have the same width"
        )
    if isinstance(exc, VecormError):
        return UserError(_first_line(exc))
    if isinstance(exc, sa_exc.NoSuchModuleError) or (
        isinstance(exc, sa_exc.ArgumentError) and "Could not parse SQLAlchemy URL" in str(exc)
    ):
        return UserError(f"not a usable database URL: {_first_line(exc)}", hint=URL_HINT)
    if isinstance(exc, sa_exc.ProgrammingError) and isinstance(exc.orig, _MISSING_SCHEMA):
        return UserError(
            f"the database refused a query: {_first_line(exc.orig)}",
            hint="create the schema first (`alembic upgrade head` or metadata.create_all)",
        )
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        if getattr(orig, "sqlstate", None) is None:  # no answer from a server: a connection error
            return UserError(f"cannot reach the database: {_first_line(orig)}", hint=CONNECT_HINT)
        return UserError(f"the database stopped the command: {_first_line(orig)}")
    return None


def raise_user_error(exc: BaseException) -> NoReturn:
    """Re-raise ``exc`` as a :class:`UserError` when it is one, unchanged otherwise."""
    translated = user_error(exc)
    if translated is None:
        raise exc
    raise translated from exc


def parse_url(value: str | URL) -> URL:
    """A psycopg 3 SQLAlchemy URL from what the user typed; a clear error if it is not one."""
    try:
        url = normalize_url(make_url(value))
    except sa_exc.ArgumentError as exc:
        raise UserError(f"not a database URL: {str(value)!r}", hint=URL_HINT) from exc
    if not url.drivername.startswith("postgresql"):
        raise UserError(f"vecorm needs PostgreSQL, not {url.get_backend_name()!r}", hint=URL_HINT)
    return url


def require_url(value: str | None) -> URL:
    """:func:`parse_url` of ``value``; a clear error when the user gave none."""
    if not value:
        raise UserError("no database given", hint=URL_HINT)
    return parse_url(value)


@contextmanager
def connect(url: URL) -> Iterator[Session]:
    """A session on ``url`` (vecorm's engine), disposed afterwards."""
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def load_model(path: str) -> type[Any]:
    """The searchable class named ``package.module:Class``, importable from the current directory.

    ``load_model("myapp.models:Document")``
    """
    from vecorm.mixin import Searchable
    from vecorm.objects import import_model
    from vecorm.schema.config import search_config

    if ":" not in path:
        raise UserError(
            f"{path!r} is not MODULE:MODEL", hint="name the class, e.g. myapp.models:Document"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `myapp.models` from the project root, like alembic
    try:
        model = import_model(path)
    except ConfigurationError as exc:
        hint = (
            "check the class name"
            if "has no attribute" in str(exc)
            else "run from your project's root, or set PYTHONPATH so the module imports"
        )
        raise UserError(str(exc), hint=hint) from exc
    if not (isinstance(model, type) and issubclass(model, Searchable)):
        raise UserError(
            f"{path} is not a searchable model",
            hint="its class must inherit vecorm.Searchable and set __vecorm__",
        )
    search_config(model)
    return model


PASSAGE_HINT = (
    "name a class declared with vecorm.Passage and "
    "__vecorm__ = vecorm.PassageConfig(parent=..., source=...)"
)


def load_passage_model(path: str) -> type[Any]:
    """The passage model named ``package.module:Class`` (:func:`load_model`, and a
    ``PassageConfig``): ``load_passage_model("myapp.models:DocPassage")``."""
    from vecorm.schema.passages import PassageConfig

    try:
        model = load_model(path)
    except UserError as exc:
        if "is not a searchable model" not in exc.format_message():
            raise
        raise UserError(f"{path} is not a passage model", hint=PASSAGE_HINT) from exc
    if not isinstance(getattr(model, "__vecorm__", None), PassageConfig):
        raise UserError(f"{path} is not a passage model", hint=PASSAGE_HINT)
    return model


def load_embedder(value: str, *, dimensions: int) -> Embedder:
    """``auto``, ``local``, ``hashing``, ``openai`` (``dimensions`` wide), or ``pkg.mod:obj``.

    A ``MODULE:NAME`` that names a class or function is called without arguments.
    """
    from vecorm.embedding.embedders.registry import EMBEDDER_CHOICES, choose_embedder
    from vecorm.objects import import_object

    if value in EMBEDDER_CHOICES:
        return choose_embedder(value, dimensions=dimensions)
    if ":" not in value:
        raise UserError(
            f"unknown embedder {value!r}",
            hint=f"use one of {', '.join(EMBEDDER_CHOICES)} or MODULE:NAME",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target = import_object(value)
    embedder = target() if callable(target) and not hasattr(target, "embed") else target
    if not hasattr(embedder, "embed") or not hasattr(embedder, "dimensions"):
        raise UserError(
            f"{value} is not an embedder",
            hint="it must have .embed(texts), .dimensions and .model_name",
        )
    return embedder  # type: ignore[no-any-return]
