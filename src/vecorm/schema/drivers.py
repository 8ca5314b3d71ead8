"""How vecorm's column types talk to each PostgreSQL driver.

The column types in :mod:`vecorm.schema.types` work on every driver SQLAlchemy supports for
PostgreSQL without any per-connection setup:

=================  ==============================================================
driver             how values travel
=================  ==============================================================
psycopg 3          **binary** (``vector``: 4 + 4n bytes), sync and async
psycopg2           text (``'[1.0,2.0,3.0]'``), cast to the column type in SQL
asyncpg            text, cast in SQL; ``bit`` as ``asyncpg.BitString``
pg8000             text, cast in SQL
=================  ==============================================================

On psycopg 3 a bound vector is a :class:`BinaryVectorParam` (or half / sparse), a class that
only vecorm creates, dumped by a dumper registered on psycopg's global adapters with type OID 0:
the server reads the type from the ``CAST(param AS VECTOR(n))`` around the parameter. Nothing
else psycopg dumps changes behaviour.

One case needs a hook: **arrays** of vectors (``ARRAY(Vector(3))``) are written fine everywhere
but psycopg 3 and psycopg2 return ``vector[]`` as one unparsed string unless the connection
knows the array type's OID, which differs per database. Add the hook once per engine::

    engine = create_engine(url)
    vecorm.schema.drivers.register_array_types(engine)     # an Engine or an AsyncEngine

asyncpg needs nothing (it looks array types up by itself). pgvector-python's own
``register_vector`` connect hooks keep working too.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from vecorm.engine import sync_engine_of

__all__ = [
    "BinaryArrayParam",
    "BinaryHalfVecParam",
    "BinarySparseVecParam",
    "BinaryVectorParam",
    "copy_dumper",
    "register_array_types",
    "type_oid",
    "uses_binary_binds",
]

#: Drivers that get pgvector's binary wire format.
BINARY_DRIVERS = frozenset({"psycopg", "psycopg_async"})
#: SQL type names whose array types :func:`register_array_types` teaches the driver.
ARRAY_ELEMENT_TYPES = ("vector", "halfvec", "sparsevec")


def uses_binary_binds(dialect: Dialect) -> bool:
    """Whether vectors are bound in binary on this dialect (psycopg 3, sync or async)."""
    return dialect.driver in BINARY_DRIVERS


class BinaryVectorParam:
    """A validated vector on its way to psycopg in pgvector's binary format.

    Inside an array (``ARRAY(Vector(n))``) psycopg dumps the elements as text instead.
    """

    __slots__ = ("payload",)
    element_type: ClassVar[str] = ">f4"

    def __init__(self, values: npt.NDArray[np.float32]) -> None:
        header = len(values).to_bytes(2, "big") + b"\x00\x00"
        self.payload = header + values.astype(self.element_type, copy=False).tobytes()

    def text(self) -> str:
        """pgvector's text form of the same value (used for array elements)."""
        values = np.frombuffer(self.payload, dtype=self.element_type, offset=4)
        return "[" + ",".join(map(repr, values.astype(np.float64).tolist())) + "]"


class BinaryHalfVecParam(BinaryVectorParam):
    """A validated half-precision vector in pgvector's binary format."""

    __slots__ = ()
    element_type: ClassVar[str] = ">f2"


class BinarySparseVecParam:
    """A validated sparse vector in pgvector's binary format, with its text form."""

    __slots__ = ("_text", "payload")

    def __init__(self, payload: bytes, text: str) -> None:
        self.payload = payload
        self._text = text

    def text(self) -> str:
        """pgvector's text form of the same value (used for array elements)."""
        return self._text


class BinaryArrayParam:
    """Values of one type as one array parameter in PostgreSQL's binary array format (psycopg
    3): a batch of rows binds one value per column, not one per row and column.

    The format names the element type's OID, which differs per database for pgvector's types
    (see :func:`type_oid`)::

        BinaryArrayParam.of_vectors(np.eye(3, dtype=np.float32), type_oid(conn, "VECTOR(3)"))
        BinaryArrayParam.of_bytes([b"a", b"bc"])                 # a bytea[]
    """

    __slots__ = ("payload",)

    def __init__(self, element_oid: int, count: int, elements: bytes) -> None:
        # one dimension, no NULLs, the element type, the length, lower bound 1; then each
        # element as its length and its binary form
        self.payload = struct.pack(">iiIii", 1, 0, element_oid, count, 1) + elements

    @classmethod
    def of_vectors(
        cls, vectors: npt.NDArray[Any], element_oid: int, element_type: str = ">f4"
    ) -> BinaryArrayParam:
        """A ``vector[]`` (``element_type`` ``">f4"``) or ``halfvec[]`` (``">f2"``) of the
        rows of ``vectors``, each in pgvector's binary form."""
        count, dimensions = vectors.shape
        cells = np.empty(
            count,
            dtype=[
                ("length", ">i4"),
                ("dimensions", ">u2"),
                ("unused", ">u2"),
                ("values", element_type, (dimensions,)),
            ],
        )
        cells["length"] = 4 + dimensions * np.dtype(element_type).itemsize
        cells["dimensions"] = dimensions
        cells["unused"] = 0
        cells["values"] = vectors
        return cls(element_oid, count, cells.tobytes())

    @classmethod
    def of_bytes(cls, values: Sequence[bytes]) -> BinaryArrayParam:
        """A ``bytea[]`` of ``values``."""
        elements = b"".join(len(value).to_bytes(4, "big") + value for value in values)
        return cls(BYTEA_OID, len(values), elements)


#: ``bytea``'s OID, the same in every database (a built-in type).
BYTEA_OID = 17


def type_oid(connection: Connection, type_sql: str) -> int:
    """The OID of the type ``type_sql`` names (``"VECTOR(64)"``) on ``connection``'s
    database, resolved as a statement would resolve it. Asked each time (one short query
    per batch): a cached OID would go stale when the extension is dropped and created again."""
    query = f"SELECT CAST(pg_catalog.pg_typeof(CAST(NULL AS {type_sql})) AS pg_catalog.oid)"
    return int(connection.exec_driver_sql(query).scalar_one())


class _BinaryParamDumper(Dumper):
    # oid 0 leaves the type to the server, which reads it from the CAST around the parameter.
    format = Format.BINARY
    oid = 0

    def dump(self, obj: BinaryVectorParam | BinarySparseVecParam | BinaryArrayParam) -> bytes:
        return obj.payload


class _TextParamDumper(Dumper):
    # Used for list elements: psycopg dumps arrays of unknown element type in text.
    format = Format.TEXT
    oid = 0

    def dump(self, obj: BinaryVectorParam | BinarySparseVecParam) -> bytes:
        return obj.text().encode()


def copy_dumper(oid: int) -> type[Dumper]:
    """A binary dumper of vecorm's vector parameters to the type ``oid`` (this database's
    ``vector``, ``halfvec`` or ``sparsevec``), for a binary ``COPY`` whose column types are
    given with ``Copy.set_types``; register it on the cursor only::

        cursor.adapters.register_dumper(None, copy_dumper(vector_oid))
    """
    return type("VectorCopyDumper", (_BinaryParamDumper,), {"oid": oid})


# Registry entries for vecorm's own parameter classes only. The binary dumper is registered
# last so that psycopg's automatic format (the %s SQLAlchemy emits) picks it.
for _param_class in (BinaryVectorParam, BinaryHalfVecParam, BinarySparseVecParam):
    psycopg.adapters.register_dumper(_param_class, _TextParamDumper)
    psycopg.adapters.register_dumper(_param_class, _BinaryParamDumper)
psycopg.adapters.register_dumper(BinaryArrayParam, _BinaryParamDumper)


def is_asyncpg_bit_string(value: object) -> bool:
    """Whether ``value`` is an ``asyncpg.BitString`` (without importing asyncpg)."""
    asyncpg = sys.modules.get("asyncpg")
    return asyncpg is not None and isinstance(value, asyncpg.BitString)


def register_array_types(bind: Engine | AsyncEngine) -> None:
    """Make ``vector[]`` / ``halfvec[]`` / ``sparsevec[]`` columns read back as lists.

    Needed on psycopg 3 and psycopg2 only for columns declared ``ARRAY(Vector(n))`` and the
    like; it adds one ``connect`` listener to the engine (one catalog query per new pooled
    connection). Calling it again does nothing.

    >>> register_array_types(engine)   # doctest: +SKIP
    """
    engine = sync_engine_of(bind)
    if not event.contains(engine, "connect", _register_on_connect):
        event.listen(engine, "connect", _register_on_connect)


_ARRAY_TYPES_QUERY = (
    "SELECT t.typname, t.oid, t.typarray FROM pg_type t "
    "WHERE t.oid IN (to_regtype('vector'), to_regtype('halfvec'), to_regtype('sparsevec'))"
)


def _register_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if isinstance(dbapi_connection, psycopg.Connection):
        _register_psycopg(dbapi_connection)
        return
    driver_connection = getattr(dbapi_connection, "driver_connection", None)
    if isinstance(driver_connection, psycopg.AsyncConnection):
        dbapi_connection.run_async(_register_psycopg_async)
        return
    module = type(dbapi_connection).__module__
    if module.startswith("psycopg2"):
        _register_psycopg2(dbapi_connection)
    # asyncpg introspects array types by itself.


def _register_psycopg(conn: psycopg.Connection[Any]) -> None:
    from psycopg.types import TypeInfo
    from psycopg.types.array import register_array

    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    rows = conn.execute(_ARRAY_TYPES_QUERY).fetchall()
    if idle and not conn.autocommit:
        conn.rollback()
    for name, oid, array_oid in rows:
        register_array(TypeInfo(name, oid, array_oid), conn)


async def _register_psycopg_async(conn: psycopg.AsyncConnection[Any]) -> None:
    from psycopg.types import TypeInfo
    from psycopg.types.array import register_array

    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    cursor = await conn.execute(_ARRAY_TYPES_QUERY)
    rows = await cursor.fetchall()
    if idle and not conn.autocommit:
        await conn.rollback()
    for name, oid, array_oid in rows:
        register_array(TypeInfo(name, oid, array_oid), conn)


def _register_psycopg2(conn: Any) -> None:
    import psycopg2.extensions  # type: ignore[import-not-found, import-untyped, unused-ignore]

    idle = conn.status == psycopg2.extensions.STATUS_READY
    with conn.cursor() as cursor:
        cursor.execute(_ARRAY_TYPES_QUERY)
        rows = cursor.fetchall()
    if idle and not conn.autocommit:
        conn.rollback()
    for name, _oid, array_oid in rows:
        array_type = psycopg2.extensions.new_array_type(
            (array_oid,), f"{name.upper()}[]", psycopg2.STRING
        )
        psycopg2.extensions.register_type(array_type, conn)
