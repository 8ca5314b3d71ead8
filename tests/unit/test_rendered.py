"""SQL rendered once (``vecorm.search.rendered``): the text it keeps, and the values it
refuses to freeze."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, column, literal, literal_column, select
from sqlalchemy.dialects import postgresql

from vecorm.search.rendered import rendered_once
from vecorm.search.vector import row_limit

ODD = Table("odd :name 5%", MetaData(), Column("id", Integer, primary_key=True), schema="s :x")


def compiled(stmt: object, dialect: object) -> str:
    return str(stmt.compile(dialect=dialect))  # type: ignore[attr-defined]


def test_a_bound_value_is_refused() -> None:
    with pytest.raises(AssertionError, match="binds"):
        rendered_once(select(ODD.c.id).where(ODD.c.id > literal(3)), [column("id", Integer)])


def test_numbers_are_written_in_and_a_limit_too() -> None:
    stmt = select(ODD.c.id).where(ODD.c.id > literal_column("3")).limit(row_limit(7))
    sql = compiled(rendered_once(stmt, [column("id", Integer)]), postgresql.psycopg.dialect())
    assert "> 3" in sql and "LIMIT 7" in sql


@pytest.mark.parametrize(
    "dialect",
    [postgresql.psycopg.dialect(), postgresql.psycopg2.dialect(), postgresql.asyncpg.dialect()],
    ids=["psycopg", "psycopg2", "asyncpg"],
)
def test_quoted_names_come_out_as_written_for_every_driver(dialect: object) -> None:
    """A ``:name`` inside a quoted name is not a parameter, and ``%`` is doubled only where
    the driver's paramstyle wants it, once."""
    text_select = rendered_once(select(ODD.c.id), [column("id", Integer)])
    sql = compiled(select(text_select.subquery("t").c.id), dialect)
    percent = "%%" if dialect.paramstyle == "pyformat" else "%"  # type: ignore[attr-defined]
    assert f'"s :x"."odd :name 5{percent}"' in sql
    assert not text_select.compile(dialect=dialect).params  # type: ignore[attr-defined]
