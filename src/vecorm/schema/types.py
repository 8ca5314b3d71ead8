"""Column types for pgvector: drop-in for ``pgvector.sqlalchemy``, bound in binary.

Code written for pgvector-python's SQLAlchemy types runs unchanged after changing its import::

    from pgvector.sqlalchemy import VECTOR, HALFVEC, SPARSEVEC, BIT, avg   # before
    from vecorm.schema.types import VECTOR, HALFVEC, SPARSEVEC, BIT, avg  # after

Every name pgvector-python exports is here (``Vector``/``VECTOR``, ``HALFVEC``, ``SPARSEVEC``,
``BIT``, ``avg``, ``sum``) plus CamelCase aliases (``HalfVector``, ``SparseVector``, ``Bit``).
The types subclass pgvector-python's, so the comparators (``l2_distance``,
``max_inner_product``, ``cosine_distance``, ``l1_distance``; ``hamming_distance``,
``jaccard_distance`` on ``BIT``) and ``isinstance`` checks behave the same. What differs:

* on psycopg 3, values travel in pgvector's **binary** format (4 + 4n bytes for a vector)
  instead of ``'[0.1,0.2,...]'`` text, which made ORM inserts of 1536-d vectors ~20x slower
  than raw psycopg; other drivers get text (see :mod:`vecorm.schema.drivers`);
* a few more inputs bind (tuples; a ``{index: value}`` dict for ``SPARSEVEC(n)``;
  ``pgvector.Bit``, bytes, bools for ``BIT``); ``Vector(n, as_numpy=True)`` reads
  ``numpy.float32`` arrays instead of lists; a ``BIT`` literal renders (``B'0101'``).

Everything else is pgvector's, to the letter: values are converted by pgvector-python's own
code, so a value it refuses fails with its message (``expected ndim to be 1``) as a
:class:`vecorm.InvalidVector`, which is a ``ValueError``; wrong dimensions, NaN and the like
are the server's ``DataError``, as with pgvector; ``literal_binds`` renders
``embedding <-> '[1.0,2.0,3.0]'``. vecorm's own API (the mixin, the search helpers) validates
with :func:`to_float_array` and its clearer messages (:class:`vecorm.DimensionMismatch`).

Example::

    from sqlalchemy.orm import Mapped, mapped_column
    from vecorm.schema.types import BIT, SPARSEVEC, Vector

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        embedding = mapped_column(Vector(3))
        sparse = mapped_column(SPARSEVEC(5))
        bits = mapped_column(BIT(4))

    session.add(Item(embedding=[1.0, 2.0, 3.0], bits="0101"))   # a list or a numpy array
    select(Item).order_by(Item.embedding.cosine_distance([1, 2, 4])).limit(5)

Reading back: ``vector`` / ``halfvec`` as lists of floats (numpy with ``as_numpy=True``),
``sparsevec`` as ``pgvector.SparseVector``, ``bit`` as a string of 0 and 1. Reflection
(``MetaData.reflect``, Alembic) yields these types with their dimensions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pgvector import Bit as PgBit
from pgvector import HalfVector as PgHalfVector
from pgvector import SparseVector as PgSparseVector
from pgvector import Vector as PgVector
from pgvector.sqlalchemy import BIT as _PgBIT
from pgvector.sqlalchemy import HALFVEC as _PgHalfVec
from pgvector.sqlalchemy import SPARSEVEC as _PgSparseVec
from pgvector.sqlalchemy import VECTOR as _PgVector
from pgvector.sqlalchemy import avg, sum
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, Cast, ColumnElement

from vecorm.errors import DimensionMismatch, InvalidVector, VectorElementTypeError
from vecorm.schema.drivers import (
    BinaryHalfVecParam,
    BinarySparseVecParam,
    BinaryVectorParam,
    is_asyncpg_bit_string,
    uses_binary_binds,
)

__all__ = [
    "BIT",
    "HALFVEC",
    "SPARSEVEC",
    "VECTOR",
    "BinaryHalfVecParam",
    "BinaryVectorParam",
    "Bit",
    "CheckedVector",
    "FloatArray",
    "HalfVec",
    "HalfVector",
    "SparseVec",
    "SparseVector",
    "Vector",
    "avg",
    "sum",
    "to_float_array",
    "to_sparse_vector",
]

FloatArray = npt.NDArray[np.float32]

#: Largest dimension pgvector accepts for each storage type.
MAX_DIMENSIONS = {"vector": 16_000, "halfvec": 16_000, "sparsevec": 1_000_000_000}


class CheckedVector(np.ndarray):
    """A float32 vector that :func:`to_float_array` already validated (finite, 1-d).

    The mixin's ``embedding`` attribute holds one, so binding it at flush time does not check
    1,536 floats a second time. It is an ordinary ``numpy.ndarray`` in every other respect.
    """


def to_float_array(value: object, dimensions: int | None, *, label: str = "vector") -> FloatArray:
    """Validate ``value`` (list, tuple, numpy array, pgvector ``Vector``) as a finite 1-d array.

    >>> to_float_array([1, 2, 3], 3).tolist()
    [1.0, 2.0, 3.0]
    """
    if type(value) is CheckedVector and (dimensions is None or value.shape[0] == dimensions):
        return value  # validated when it was assigned
    if type(value) is np.ndarray and value.dtype is _FLOAT32:
        array = value  # the common case (an embedder's output, a row of a matrix): as it is
    else:
        if isinstance(value, PgVector | PgHalfVector):
            value = value.to_numpy()
        if isinstance(value, str | bytes):
            raise InvalidVector(
                f"{label} must be a sequence of numbers, not {type(value).__name__}"
            )
        try:
            # a float64 too large for float32 becomes infinity, refused below as such
            with np.errstate(over="ignore"):
                array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidVector(f"{label} must be a sequence of numbers") from exc
    if array.ndim != 1:
        raise InvalidVector(f"{label} must be one-dimensional, got shape {array.shape}")
    if dimensions is not None and array.shape[0] != dimensions:
        raise DimensionMismatch(f"{label} expected {dimensions} dimensions, not {array.shape[0]}")
    if array.shape[0] == 0:
        raise InvalidVector(f"{label} must have at least 1 dimension")
    if not _all_finite(array):
        raise InvalidVector(f"{label} contains NaN or infinity, which pgvector cannot store")
    return array


_FLOAT32 = np.dtype(np.float32)


def _all_finite(array: FloatArray) -> bool:
    """Whether every value of ``array`` is finite (``count_nonzero`` of the test, not
    ``.all()``: 3 us for 1,536 values against 4 us, on every vector assigned or bound)."""
    finite = int(np.count_nonzero(np.isfinite(array)))
    return finite == int(array.shape[0])


def to_sparse_vector(
    value: object, dimensions: int | None, *, label: str = "sparsevec"
) -> PgSparseVector:
    """Validate ``value`` as a ``pgvector.SparseVector`` of ``dimensions`` (if given).

    Accepts a ``SparseVector``, a ``{index: value}`` dict (0-based, needs ``dimensions``), a
    dense list / numpy array, or a SciPy sparse array.

    >>> to_sparse_vector({0: 1.0, 4: 2.0}, 5).to_text()
    '{1:1.0,5:2.0}/5'
    """
    if isinstance(value, dict):
        if dimensions is None:
            raise InvalidVector(
                f"{label}: a dict needs the number of dimensions; declare SPARSEVEC(n) or "
                "pass pgvector.SparseVector(values, n)"
            )
        if any(not 0 <= int(index) < dimensions for index in value):
            raise DimensionMismatch(f"{label} indices must be in [0, {dimensions})")
        sparse = PgSparseVector(value, dimensions)
    elif isinstance(value, PgSparseVector):
        sparse = value
    elif isinstance(value, str | bytes):
        raise InvalidVector(f"{label} must be a SparseVector, dict or sequence of numbers")
    elif hasattr(value, "tocoo"):  # SciPy sparse array or matrix
        sparse = PgSparseVector(value)
    else:
        sparse = PgSparseVector(to_float_array(value, dimensions, label=label))
    if dimensions is not None and sparse.dimensions() != dimensions:
        raise DimensionMismatch(
            f"{label} expected {dimensions} dimensions, not {sparse.dimensions()}"
        )
    if not np.isfinite(np.asarray(sparse.values(), dtype=np.float32)).all():
        raise InvalidVector(f"{label} contains NaN or infinity, which pgvector cannot store")
    return sparse


def _check_dim(type_name: str, dim: object) -> None:
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
        raise TypeError(
            f"{type_name}(dim) takes the number of dimensions, not {type(dim).__name__}; "
            "a value to store is a list or numpy array (or pgvector's value classes)"
        )


def _pgvector_error(exc: Exception) -> InvalidVector:
    """pgvector-python's exception as vecorm's, keeping its builtin class and its exact text."""
    if isinstance(exc, TypeError):
        return VectorElementTypeError(*exc.args)
    return InvalidVector(*exc.args)


def _dense_text(value: Any, value_class: type[PgVector] | type[PgHalfVector]) -> str | None:
    """``value`` as pgvector's text, exactly as ``pgvector.sqlalchemy`` binds it."""
    if isinstance(value, tuple):
        value = list(value)  # vecorm also takes tuples; pgvector takes lists
    try:
        text: str | None = value_class._to_db(value)
    except (TypeError, ValueError) as exc:
        raise _pgvector_error(exc) from exc
    return text


def _dense_array(
    value: Any, value_class: type[PgVector] | type[PgHalfVector], dtype: type[np.floating[Any]]
) -> npt.NDArray[Any]:
    """``value`` as a 1-d array, accepted and refused exactly as pgvector's text binding would.

    The numpy conversion is the fast path; anything it does not take cleanly (a nested list,
    ``None`` that numpy would read as NaN, a non-numeric string) goes through pgvector's own
    conversion, which raises its error or yields the text the server would have parsed.
    """
    if isinstance(value, value_class):
        return np.asarray(value.to_numpy(), dtype=dtype)
    if isinstance(value, np.ndarray) and value.ndim == 1:
        try:
            return value.astype(dtype, copy=False)
        except (TypeError, ValueError) as exc:
            raise _pgvector_error(exc) from exc
    if isinstance(value, list | tuple):
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            array = None
        if array is not None and array.ndim == 1 and not np.isnan(array).any():
            return array
    text = _dense_text(value, value_class)  # raises pgvector's error for what it refuses
    assert text is not None
    return np.asarray([float(item) for item in text[1:-1].split(",") if item], dtype=np.float32)


class _LiteralCast(Cast[Any]):
    """``CAST(:param AS VECTOR(n))`` for a bound value, the bare literal under literal_binds.

    The cast is what lets psycopg 3 send the value in binary with no type OID (and a bare
    parameter in a select list be typed); a rendered literal needs no cast, and pgvector
    renders none, so ``embedding <-> '[1.0,2.0,3.0]'`` reads the same with either import.
    """

    inherit_cache = True


@compiles(_LiteralCast)
def _compile_literal_cast(element: _LiteralCast, compiler: SQLCompiler, **kw: Any) -> str:
    if kw.get("literal_binds"):
        return compiler.process(element.clause, **kw)
    sql: str = compiler.visit_cast(element, **kw)  # type: ignore[no-untyped-call]
    return sql


def _literal_processor(
    stock: Callable[[Any], str] | None, convert: Callable[[Any], Any] = lambda value: value
) -> Callable[[Any], str]:
    assert stock is not None

    def process(value: Any) -> str:
        try:
            return stock(convert(value))
        except (TypeError, ValueError) as exc:
            raise _pgvector_error(exc) from exc

    return process


class _DenseVectorType:
    """Bind / result / literal behaviour shared by :class:`Vector` and :class:`HalfVec`."""

    dim: int | None
    as_numpy: bool
    value_class: ClassVar[type[PgVector] | type[PgHalfVector]]
    element_dtype: ClassVar[type[np.floating[Any]]]
    binary_param: ClassVar[type[BinaryVectorParam]]

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        return _LiteralCast(bindvalue, self)  # type: ignore[arg-type]

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        value_class = self.value_class
        if uses_binary_binds(dialect):
            param = self.binary_param
            dtype = self.element_dtype

            def process_binary(value: Any) -> BinaryVectorParam | None:
                if value is None:
                    return None
                return param(_dense_array(value, value_class, dtype))

            return process_binary

        def process_text(value: Any) -> str | None:
            return _dense_text(value, value_class)

        return process_text

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str]:
        stock = super().literal_processor(dialect)  # type: ignore[misc]
        return _literal_processor(stock, lambda v: list(v) if isinstance(v, tuple) else v)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        if self.as_numpy:
            return _to_array_result

        def process(value: Any) -> list[float] | None:
            if isinstance(value, str):
                # pgvector-python's parse, so the floats compare equal.
                return [float(item) for item in value[1:-1].split(",")]
            array = _to_array_result(value)
            return None if array is None else array.tolist()

        return process


def _to_array_result(value: Any) -> FloatArray | None:
    if value is None:
        return None
    if isinstance(value, str):
        return np.fromstring(value[1:-1], dtype=np.float32, sep=",")
    if isinstance(value, PgVector | PgHalfVector):
        return np.asarray(value.to_numpy(), dtype=np.float32)
    return np.asarray(value, dtype=np.float32)


class Vector(_DenseVectorType, _PgVector):
    """``vector(n)`` column type: binary binds on psycopg 3, list (or numpy) results.

    ``Vector(1536)``, ``Vector()`` for any length, ``Vector(384, as_numpy=True)``.
    """

    cache_ok = True
    value_class = PgVector
    element_dtype = np.float32
    binary_param = BinaryVectorParam

    def __init__(self, dim: int | None = None, as_numpy: bool = False) -> None:
        _check_dim("Vector", dim)
        super().__init__(dim)
        self.as_numpy = as_numpy


class HalfVec(_DenseVectorType, _PgHalfVec):
    """``halfvec(n)`` column type: half the storage of ``vector``, binary binds.

    ``HalfVec(1536)`` (alias ``HALFVEC`` / ``HalfVector``); values read back as lists.
    """

    cache_ok = True
    value_class = PgHalfVector
    element_dtype = np.float16
    binary_param = BinaryHalfVecParam

    def __init__(self, dim: int | None = None, as_numpy: bool = False) -> None:
        _check_dim("HalfVec", dim)
        super().__init__(dim)
        self.as_numpy = as_numpy


def _to_sparse_result(value: Any) -> PgSparseVector | None:
    if value is None or isinstance(value, PgSparseVector):
        return value
    return PgSparseVector.from_text(value)


class SparseVec(_PgSparseVec):
    """``sparsevec(n)`` column type; values are ``pgvector.SparseVector`` both ways.

    ``SparseVec(30000)`` (alias ``SPARSEVEC`` / ``SparseVector``). Binds accept what
    pgvector's do (a ``pgvector.SparseVector``, a dense list / numpy array, SciPy sparse) and a
    ``{index: value}`` dict (0-based) when the column declares its dimensions.
    """

    cache_ok = True

    def __init__(self, dim: int | None = None) -> None:
        _check_dim("SparseVec", dim)
        super().__init__(dim)

    def _sparse(self, value: Any) -> PgSparseVector:
        """``value`` as pgvector's ``SparseVector``, refused with pgvector's own errors."""
        if isinstance(value, PgSparseVector):
            return value
        try:
            if isinstance(value, dict) and self.dim is not None:
                return PgSparseVector(value, self.dim)
            return PgSparseVector(list(value) if isinstance(value, tuple) else value)
        except (TypeError, ValueError) as exc:
            raise _pgvector_error(exc) from exc

    def bind_expression(self, bindvalue: BindParameter[Any]) -> ColumnElement[Any]:
        return _LiteralCast(bindvalue, self)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        if uses_binary_binds(dialect):

            def process_binary(value: Any) -> BinarySparseVecParam | None:
                if value is None:
                    return None
                sparse = self._sparse(value)
                return BinarySparseVecParam(sparse.to_binary(), sparse.to_text())

            return process_binary

        def process_text(value: Any) -> str | None:
            if value is None:
                return None
            text: str = self._sparse(value).to_text()
            return text

        return process_text

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str]:
        return _literal_processor(super().literal_processor(dialect), self._sparse)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        return _to_sparse_result


_BITS = frozenset("01")


def to_bit_string(value: object, *, label: str = "bit") -> str:
    """``value`` as a string of 0 and 1: a str, ``pgvector.Bit``, bytes, bools or numpy bools.

    >>> to_bit_string([True, False, True])
    '101'
    """
    if isinstance(value, str):
        if not _BITS.issuperset(value):
            raise InvalidVector(f"{label} must be a string of 0 and 1, got {value[:20]!r}")
        return str(value)
    if is_asyncpg_bit_string(value):
        text: str = value.as_string()  # type: ignore[attr-defined]
        return text
    if isinstance(value, PgBit):
        return str(value.to_text())
    try:
        return str(PgBit(value).to_text())  # type: ignore[arg-type]  # bytes, list[bool], numpy bool / 0-1 uint8 array
    except (TypeError, ValueError) as exc:
        raise _pgvector_error(exc) from exc


class Bit(_PgBIT):
    """``bit(n)`` column type for binary vectors.

    ``Bit(64)`` (alias ``BIT``), with ``hamming_distance`` / ``jaccard_distance``. Binds take
    what pgvector's do (a ``'0101'`` string, ``asyncpg.BitString`` on asyncpg) and also
    ``pgvector.Bit``, bytes, lists of bools and numpy bool arrays, on every driver. Values come
    back exactly as pgvector's ``BIT`` returns them: a string of 0 and 1, except on asyncpg
    with SQLAlchemy 2.0, which hands back ``asyncpg.BitString`` (SQLAlchemy 2.1 converts it).
    """

    cache_ok = True

    @property
    def length(self) -> int | None:
        """The declared number of bits (``None`` for ``BIT VARYING`` without a limit)."""
        length: int | None = getattr(self.impl_instance, "length", None)
        return length

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        foreign_bit_string = is_asyncpg_bit_string(value) and dialect.driver != "asyncpg"
        if foreign_bit_string or isinstance(value, PgBit | bytes | list | np.ndarray):
            value = to_bit_string(value)  # vecorm's extra inputs; pgvector.Bit's errors
        # pgvector's own: a str becomes asyncpg.BitString on asyncpg, the rest goes as it is
        # (a bad digit is the server's error, as with pgvector).
        return super().process_bind_param(value, dialect)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        # pgvector.sqlalchemy's BIT has no literal renderer (CompileError); vecorm's: B'0101'.
        return "B'" + to_bit_string(value) + "'"


# pgvector.sqlalchemy's upper-case names and CamelCase aliases.
VECTOR = Vector
HALFVEC = HalfVector = HalfVec
SPARSEVEC = SparseVector = SparseVec
BIT = Bit

# Reflection (MetaData.reflect, Alembic's comparison) yields vecorm's types with dimensions.
ischema_names["vector"] = Vector
ischema_names["halfvec"] = HalfVec
ischema_names["sparsevec"] = SparseVec
ischema_names["bit"] = Bit


# Migrations render a type as ``<its module>.<its name>``: keep them on the stable public path
# (``import vecorm.types``), which is also where pgvector users import them from.
for _public in (BIT, HALFVEC, SPARSEVEC, VECTOR, Bit, HalfVec, SparseVec, Vector):
    _public.__module__ = "vecorm.types"
