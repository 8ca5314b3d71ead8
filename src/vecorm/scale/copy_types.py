"""How each column of a table travels in a binary ``COPY`` through psycopg 3.

In binary COPY the client sends each value in its column type's wire format, so the type
must be known (``Copy.set_types``): :func:`copy_types` reads every column's type from the
catalog and picks what writes it::

    types = copy_types(connection, driver, '"public"."documents"')
    types["embedding"]    # CopyType(oid=16390, dumper=VectorCopyDumper)
    types["title"]        # CopyType(oid=1043): psycopg's own varchar dumper

* ``vector`` / ``halfvec`` / ``sparsevec``: vecorm's parameters in pgvector's binary format
  (:func:`vecorm.schema.drivers.copy_dumper`);
* enums and ``char(n)``: their binary form is their text; a domain: its base type's form;
* everything psycopg has a binary dumper for, with a guard where that dumper is laxer than an
  INSERT: psycopg's C dumpers write ``smallint`` / ``integer`` values out of range modulo
  2**16 / 2**32 (2**40 becomes 0) and a ``real`` out of range as infinity, where PostgreSQL
  refuses them; a ``numeric`` column takes a float as PostgreSQL's cast does (15 digits);
* anything else (``bit``, ``tsvector``, arrays of the guarded types ...) is ``refused``: those
  rows go through INSERT instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.string import StrBinaryDumper
from sqlalchemy import text
from sqlalchemy.engine import Connection

from vecorm.schema.drivers import copy_dumper

__all__ = ["CopyType", "copy_types"]

#: Extension types written with :func:`~vecorm.schema.drivers.copy_dumper`.
VECTOR_TYPES = frozenset({"vector", "halfvec", "sparsevec"})
#: Largest finite ``real``.
FLOAT4_MAX = 3.4028234663852886e38
#: Array types whose elements psycopg's binary dumpers would not range-check.
_UNGUARDED_ARRAYS = frozenset({"_int2", "_int4", "_float4"})

_COLUMN_TYPES = text(
    "SELECT a.attname, t.oid, t.typname, t.typtype, b.oid, b.typname, b.typtype "
    "FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid "
    "LEFT JOIN pg_catalog.pg_type b ON b.oid OPERATOR(pg_catalog.=) t.typbasetype "
    "WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(:table) "
    "AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped"
)


@dataclass(frozen=True)
class CopyType:
    """How one column travels: the OID for ``set_types``, the dumper to register for it
    (``None``: psycopg has one), a check or conversion of each value, or why it cannot."""

    oid: int
    dumper: type[Dumper] | None = None
    guard: Callable[[Any], Any] | None = None
    refused: str | None = None


def copy_types(
    connection: Connection,
    driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    qualified_table: str,
) -> dict[str, CopyType]:
    """``{column name: CopyType}`` for every column of the table."""
    rows = connection.execute(_COLUMN_TYPES, {"table": qualified_table}).all()
    return {str(row[0]): _copy_type(driver, *row[1:]) for row in rows}


def _copy_type(
    driver: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
    oid: int,
    name: str,
    kind: str,
    base_oid: int | None,
    base_name: str | None,
    base_kind: str | None,
) -> CopyType:
    if kind == "d" and base_oid is not None:  # a domain travels as its base type
        oid, name, kind = base_oid, str(base_name), str(base_kind)
    if name in VECTOR_TYPES:
        return CopyType(oid, copy_dumper(oid))
    if kind == "e" or name == "bpchar":
        return CopyType(oid, type("TextLikeDumper", (StrBinaryDumper,), {"oid": oid}))
    if name in _UNGUARDED_ARRAYS:
        return CopyType(oid, refused=f"psycopg's binary {name[1:]}[] does not check ranges")
    try:
        driver.adapters.get_dumper_by_oid(oid, Format.BINARY)
    except psycopg.ProgrammingError:
        return CopyType(oid, refused=f"psycopg cannot write type {name} in binary")
    return CopyType(oid, guard=_GUARDS.get(name))


def _integer_guard(bits: int, name: str) -> Callable[[Any], Any]:
    limit = 2 ** (bits - 1)

    def guard(value: Any) -> Any:
        if isinstance(value, int) and not -limit <= value < limit:
            raise OverflowError(f"{value} is out of range for type {name}")
        return value

    return guard


def _real_guard(value: Any) -> Any:
    if isinstance(value, float | int) and math.isfinite(value) and abs(value) > FLOAT4_MAX:
        raise OverflowError(f"{value} is out of range for type real")
    return value


def _numeric_guard(value: Any) -> Any:
    if isinstance(value, float):
        # PostgreSQL's float8 -> numeric cast keeps 15 significant digits.
        return Decimal(format(value, ".15g")) if math.isfinite(value) else Decimal(value)
    return value


_GUARDS: dict[str, Callable[[Any], Any]] = {
    "int2": _integer_guard(16, "smallint"),
    "int4": _integer_guard(32, "integer"),
    "float4": _real_guard,
    "numeric": _numeric_guard,
}
