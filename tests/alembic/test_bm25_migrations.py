"""BM25 statistics through Alembic: side tables and triggers in the revision, existing rows
backfilled, k1/b changes replace the functions, downgrade restores, a second run is empty."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.alembic.conftest import Project, body

MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
import vecorm
from vecorm.schema.config import BM25

class Base(DeclarativeBase):
    pass

class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=3, index=None{options})
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
"""


def triggers(project: Project) -> list[str]:
    with project.engine.connect() as conn:
        return list(
            conn.scalars(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = 'notes'::regclass "
                    "AND NOT tgisinternal ORDER BY tgname"
                )
            )
        )


def documents_counted(project: Project) -> int:
    with project.engine.connect() as conn:
        return int(
            conn.scalar(
                text(
                    "SELECT coalesce(sum(df), 0) FROM (SELECT df FROM notes_bm25_terms "
                    "WHERE term = '' UNION ALL SELECT df FROM notes_bm25_deltas WHERE term = '') c"
                )
            )
        )


def test_bm25_statistics_through_migrations(project_factory: object) -> None:
    project: Project = project_factory()  # type: ignore[operator]
    # Version 1: a searchable table without BM25, with rows in it.
    project.set_models(MODELS.format(options=", bm25=None"))
    first = project.autogenerate("notes")
    assert "bm25" not in first.read_text()
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'vacuum'), (2, 'lock wait')"))

    # Version 2: BM25 on. Side tables and triggers appear; existing rows are backfilled.
    project.set_models(MODELS.format(options=""))
    second = project.autogenerate("bm25")
    source = second.read_text()
    for name in ("notes_bm25_postings", "notes_bm25_terms", "notes_bm25_deltas"):
        assert f"op.create_table('{name}'" in source
    assert "op.create_bm25_statistics(" in source
    assert "import vecorm.alembic" in source
    assert source.index("op.create_table('notes_bm25_postings'") < source.index(
        "op.create_bm25_statistics("
    )
    project.upgrade()
    assert triggers(project) == [
        "notes_bm25_delete",
        "notes_bm25_insert",
        "notes_bm25_truncate",
        "notes_bm25_update",
    ]
    assert documents_counted(project) == 2
    with project.engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (3, 'vacuum full')"))
    assert documents_counted(project) == 3

    # Up to date: a second autogenerate renders nothing.
    assert_empty(project.autogenerate("nothing"))
    project.upgrade()

    # Version 3: other k1/b: the functions are replaced (impacts recomputed by the rebuild).
    project.set_models(MODELS.format(options=", bm25=BM25(k1=1.2, b=0.75)"))
    third = project.autogenerate("k1 b")
    assert "op.create_bm25_statistics(" in third.read_text()
    assert "1.2" in third.read_text()
    project.upgrade()
    assert_empty(project.autogenerate("nothing again"))
    project.upgrade()

    # Downgrades: the previous definitions come back, then the statistics go.
    project.downgrade("-2")  # past "nothing again" and "k1 b"
    with project.engine.connect() as conn:
        definition = conn.scalar(text("SELECT pg_get_functiondef('notes_bm25_insert'::regproc)"))
    assert "0.9" in str(definition) and "1.2" not in str(definition)
    assert documents_counted(project) == 3
    project.downgrade("-2")  # past "nothing" and "bm25"
    assert triggers(project) == []
    with project.engine.connect() as conn:
        assert conn.scalar(text("SELECT to_regclass('notes_bm25_postings')")) is None
    project.upgrade()
    assert documents_counted(project) == 3


def assert_empty(revision: Path) -> None:
    source = revision.read_text()
    assert "op." not in source.split("def upgrade")[1].split("def downgrade")[0], source


def bm25_ids(project: Project, words: str) -> list[int]:
    """Ids that BM25 text search finds, through the project's current models."""
    import importlib

    from sqlalchemy.orm import Session

    module = importlib.import_module(project.modules[-1])
    with Session(project.engine) as session:
        return [row.id for row, _ in session.execute(module.Note.text_search(words, k=10))]


def test_expression_change_rebuilds_the_statistics(project_factory: object) -> None:
    project: Project = project_factory()  # type: ignore[operator]
    project.set_models(MODELS.format(options=""))
    project.autogenerate("notes")
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'running'), (2, 'walks')"))
    assert bm25_ids(project, "run") == [1]  # english stems

    project.set_models(MODELS.format(options=', language="simple"'))
    revision = project.autogenerate("simple")
    source = revision.read_text()
    assert "op.alter_column_expression(" in source
    # The expression change rebuilds; the function replacement then need not.
    assert "op.create_bm25_statistics(" in source and "rebuild=False" in source
    project.upgrade()
    assert bm25_ids(project, "running") == [1]
    assert bm25_ids(project, "run") == []
    assert_empty(project.autogenerate("nothing"))
    project.upgrade()
    project.downgrade("-2")
    project.set_models(MODELS.format(options=""))
    assert bm25_ids(project, "run") == [1]  # rebuilt for the old expression on the way down


def test_expression_changed_by_hand_is_detected(project_factory: object) -> None:
    project: Project = project_factory()  # type: ignore[operator]
    project.set_models(MODELS.format(options=', language="simple"'))
    project.autogenerate("notes")
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'running')"))
        # What a hand-written migration would do without vecorm's operation.
        conn.execute(
            text(
                "ALTER TABLE notes ALTER COLUMN search_vector SET EXPRESSION AS "
                "(to_tsvector('english'::regconfig, coalesce(body, '')))"
            )
        )
    project.set_models(MODELS.format(options=""))
    revision = project.autogenerate("stale statistics")
    assert "op.create_bm25_statistics(" in revision.read_text()
    assert "rebuild=False" not in revision.read_text()
    project.upgrade()
    assert bm25_ids(project, "run") == [1]


def test_functions_of_an_earlier_release_are_replaced(project_factory: object) -> None:
    """A project whose functions predate the pinned search_path gets them replaced."""
    project: Project = project_factory()  # type: ignore[operator]
    project.set_models(MODELS.format(options=""))
    project.autogenerate("notes")
    project.upgrade()
    with project.engine.begin() as conn:
        # As 0.1 created it: no SET search_path, unqualified calls, another signature.
        conn.execute(text("ALTER FUNCTION notes_bm25_insert() RESET search_path"))
        conn.execute(
            text("COMMENT ON FUNCTION notes_bm25_insert() IS 'vecorm bm25 0123456789abcdef'")
        )
        conn.execute(text("INSERT INTO notes (id, body) VALUES (1, 'vacuum')"))
    revision = project.autogenerate("replace functions")
    source = revision.read_text()
    assert "op.create_bm25_statistics(" in source
    assert "SET search_path = pg_catalog, pg_temp" in source
    project.upgrade()
    with project.engine.connect() as conn:
        configs = conn.scalars(
            text("SELECT proconfig FROM pg_proc WHERE proname LIKE 'notes\\_bm25\\_%'")
        ).all()
    assert configs and all(config == ["search_path=pg_catalog, pg_temp"] for config in configs)
    assert documents_counted(project) == 1
    assert_empty(project.autogenerate("nothing"))
    project.upgrade()
    project.downgrade("-2")  # the earlier definitions come back, as they were
    with project.engine.connect() as conn:
        config = conn.scalar(
            text("SELECT proconfig FROM pg_proc WHERE proname = 'notes_bm25_insert'")
        )
    assert config is None


TENANT_MODELS = """
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
import vecorm

class Base(DeclarativeBase):
    pass

class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",), dimensions=3, index=None, bm25=vecorm.BM25({options})
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
"""


def _documents_by_tenant(project: Project) -> dict[int | None, int]:
    """Documents counted by the statistics, per tenant (``None``: kept for the whole table)."""
    with project.engine.connect() as conn:
        columns = set(
            conn.scalars(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'notes_bm25_terms'"
                )
            )
        )
        tenant = "tenant_id" if "tenant_id" in columns else "NULL::int"
        rows = conn.execute(
            text(
                f"SELECT {tenant}, sum(df) FROM (SELECT {tenant}, df FROM notes_bm25_terms "
                f"WHERE term = '' UNION ALL SELECT {tenant}, df FROM notes_bm25_deltas "
                f"WHERE term = '') c GROUP BY 1"
            )
        )
        return {row[0]: int(row[1]) for row in rows}


def test_statistics_per_tenant_and_back_through_migrations(project_factory: object) -> None:
    """BM25() -> BM25(distributed_by="tenant_id") on a table with rows: Alembic alone would
    add a NOT NULL column to the terms table (failing on its first row) and could not change
    its key; the revision recreates the side tables in the new shape and refills them."""
    project: Project = project_factory()  # type: ignore[operator]
    project.set_models(TENANT_MODELS.format(options=""))
    first = project.autogenerate("notes")
    project.upgrade()
    with project.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO notes (tenant_id, id, body) VALUES "
                "(1, 1, 'vacuum'), (1, 2, 'lock wait'), (2, 3, 'vacuum freeze')"
            )
        )
    assert _documents_by_tenant(project) == {None: 3}

    project.set_models(TENANT_MODELS.format(options='distributed_by="tenant_id"'))
    change = project.autogenerate("per tenant")
    upgrade = change.read_text()
    assert "add_column" not in upgrade and "op.drop_table('notes_bm25_terms')" in upgrade
    project.upgrade()
    assert _documents_by_tenant(project) == {1: 2, 2: 1}
    with project.engine.begin() as conn:  # the new triggers keep them
        conn.execute(text("INSERT INTO notes (tenant_id, id, body) VALUES (2, 4, 'wait')"))
    assert _documents_by_tenant(project) == {1: 2, 2: 2}
    empty = project.autogenerate("nothing")
    assert body(empty, "upgrade") == "pass", empty.read_text()
    empty.unlink()

    project.downgrade(first.name.split("_")[0])
    assert _documents_by_tenant(project) == {None: 4}
    with project.engine.begin() as conn:  # the old triggers, and their sequences, work again
        conn.execute(text("INSERT INTO notes (tenant_id, id, body) VALUES (3, 5, 'vacuum')"))
    assert _documents_by_tenant(project) == {None: 5}
    # The old shape exactly as vecorm declares it: with the old models, nothing to do.
    change.unlink()
    project.set_models(TENANT_MODELS.format(options=""))
    again = project.autogenerate("again nothing")
    assert body(again, "upgrade") == "pass", again.read_text()
