"""Exceptions raised by vecorm.

Every error a user can cause is a subclass of :class:`VecormError`, and its message says
what to do about it::

    try:
        session.commit()
    except vecorm.DimensionMismatch as exc:
        print(exc)  # Document.embedding expects 1536 values, got 384

Every warning vecorm gives is a :class:`VecormWarning`, so one filter silences or raises them
all: ``warnings.simplefilter("error", vecorm.VecormWarning)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class VecormError(Exception):
    """Base class of every exception vecorm raises on purpose."""


class VecormWarning(UserWarning):
    """Base class of every warning vecorm gives."""


class ConfigurationError(VecormError):
    """A model's ``__vecorm__`` settings are invalid; the message names the class."""


class InvalidVector(VecormError, ValueError):
    """A vector value cannot be stored: wrong shape, NaN or infinity, not numeric.

    Raised by vecorm's own API (the mixin, search helpers) with vecorm's messages, and by the
    drop-in column types in :mod:`vecorm.types` with **pgvector-python's exact text** (a
    ``ValueError``, as pgvector raises), so both of these pass::

        pytest.raises(ValueError, match="expected ndim to be 1")
        pytest.raises(vecorm.InvalidVector, match="expected ndim to be 1")
    """


class VectorElementTypeError(InvalidVector, TypeError):
    """An element of a vector is not a number (pgvector-python raises ``TypeError`` here).

    ``Vector(3)`` bound to ``[1, None, 3]`` raises it with Python's own text, ``float()
    argument must be a string or a real number, not 'NoneType'``; it is also an
    :class:`InvalidVector`, so one ``except vecorm.InvalidVector`` catches every refused value.
    """


class DimensionMismatch(InvalidVector):
    """A vector has a different number of values than its column or provider expects."""


class VectorDimensionsError(VecormError):
    """A vector column cannot change its width while it holds vectors (an Alembic operation
    refused; the message names both ways out). Also importable from ``vecorm.alembic``."""


class EmbeddingError(VecormError):
    """An embedding provider failed (after its retries) or answered something unusable.

    ``rejected_input`` is true when the texts themselves were refused (too long, empty, an
    HTTP 400 from the provider): the same texts would fail again, unlike a rate limit, a
    timeout or a server error. A backfill or worker then finds the texts to blame and carries
    on with the others::

        except vecorm.EmbeddingError as exc:
            if exc.rejected_input: ...
    """

    def __init__(self, message: str = "", *, rejected_input: bool = False) -> None:
        super().__init__(message)
        self.rejected_input = rejected_input

    def __reduce__(self) -> tuple[Any, ...]:
        return (_embedding_error, (str(self), self.rejected_input))


def _embedding_error(message: str, rejected_input: bool) -> EmbeddingError:
    return EmbeddingError(message, rejected_input=rejected_input)


class BulkInsertError(VecormError):
    """:func:`vecorm.bulk_insert` refused or could not write a row; nothing of that call was
    written. ``row`` is the position of the row to blame in the rows given (``None`` when no
    single row is)::

        except vecorm.BulkInsertError as exc:
            print(exc.row, exc)   # 2500 bulk_insert(Document): rows[2500]: duplicate key ...
    """

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


class ServerError(VecormError):
    """The embedded PostgreSQL server could not be started or reached."""


class IndexBuildError(VecormError):
    """A vector index build could not run (wrong target, failed build)."""


class IndexBuildBlocked(IndexBuildError):
    """A concurrent index build gave up waiting for other sessions' transactions.

    ``blockers`` lists them (:class:`vecorm.schema.concurrently.BlockingSession`: pid, state,
    application_name, xact_start); the message names them and what to do.
    """

    def __init__(self, message: str, blockers: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.blockers = tuple(blockers)


class ReplicaLagError(VecormError):
    """A replica did not replay the primary's WAL up to a position in time."""
