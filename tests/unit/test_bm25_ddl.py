"""The BM25 DDL elements, compiled without a server: one named object per statement, the same
text whichever PostgreSQL driver compiles it, every side table and sequence schema-qualified in
the function bodies, every function's search_path pinned."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.search import bm25
from vecorm.search.bm25 import ddl


class Base(DeclarativeBase):
    pass


class Plain(vecorm.Searchable, Base):
    __tablename__ = "plain_notes"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3, index=None)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


class Awkward(vecorm.Searchable, Base):
    __tablename__ = 'Odd "Notes"'
    __table_args__ = {"schema": "My Schema"}
    __vecorm__ = vecorm.SearchConfig(fields=("select",), dimensions=3, index=None)
    user: Mapped[int] = mapped_column("user", primary_key=True)
    select: Mapped[str] = mapped_column("select")


@pytest.mark.parametrize(
    ("model", "schema"), [(Plain, "public"), (Awkward, "My Schema"), (Awkward, "other")]
)
def test_one_named_object_per_statement(model: type, schema: str) -> None:
    tables = bm25.side_tables(model)
    elements = bm25.triggers.create_elements(tables, schema)
    assert [element.sql() for element in elements] == bm25.create_statements(tables, schema)
    # The driver the application uses compiles the same text (both escape % as pyformat).
    assert [element.sql(psycopg.dialect()) for element in elements] == [  # type: ignore[no-untyped-call]
        element.sql() for element in elements
    ]
    described = [element.description for element in elements]
    assert described[:2] == [
        f"sequence {ddl.DIALECT.identifier_preparer.quote_schema(schema)}."
        f"{ddl.DIALECT.identifier_preparer.quote(ddl.object_name(tables.base_name, which))}"
        for which in ("statements", "avgdl")
    ]
    kinds = [element.kind for element in elements]
    assert kinds.count("function") == 6 + 1 and kinds.count("trigger") == 4 + 4
    for element in elements:
        quoted = ddl.DIALECT.identifier_preparer.quote(element.name)
        assert quoted in element.sql(), element.description
    drops = ddl.drop_elements(tables.base_name, schema)
    assert [drop.sql() for drop in drops] == bm25.drop_statements(tables, schema)


@pytest.mark.parametrize("model", [Plain, Awkward])
def test_bodies_qualify_every_object_and_pin_the_search_path(model: type) -> None:
    tables = bm25.side_tables(model)
    preparer = ddl.DIALECT.identifier_preparer
    prefix = preparer.quote_schema("Elsewhere") + "."
    names = [tables.base_name] + [
        ddl.object_name(tables.base_name, suffix)
        for suffix in ("postings", "terms", "deltas", "statements", "avgdl")
    ]
    for name, definition in bm25.function_definitions(tables, "Elsewhere").items():
        assert f"LANGUAGE plpgsql SET search_path = {bm25.SEARCH_PATH} AS" in definition, name
        body = definition.split("$vecorm$")[1]
        for each in sorted(names, key=len, reverse=True):  # longest first: the table last
            qualified = prefix + preparer.quote(each)
            body = body.replace(qualified.replace("'", "''"), "").replace(qualified, "")
            assert preparer.quote(each) not in body, (name, each)
        # Every function called is pg_catalog's, named so (coalesce is a keyword construct).
        calls = set(re.findall(r"(?<![\w.])(\w+)\(", body)) - {"coalesce"}
        assert not calls, (name, calls)
