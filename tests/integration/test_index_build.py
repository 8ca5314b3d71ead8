"""Large index builds: CONCURRENTLY, per-statement memory, progress, the memory warning."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from click.testing import CliRunner
from sqlalchemy import String, func, insert, select, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateIndex

import vecorm
import vecorm.alembic
from tests.integration.catalog import indexes
from vecorm.errors import IndexBuildBlocked
from vecorm.scale.index_build import (
    BuildProgress,
    IndexBuildError,
    IndexBuildMemoryWarning,
    build_index,
    build_model_index,
    estimate_hnsw_memory,
    format_memory,
    model_vector_index,
    parse_memory,
)
from vecorm.scale.partitioning import check_partition_indexes, create_partition
from vecorm.schema.concurrently import run_concurrently
from vecorm.tools.cli import main

DIMS = 128
ROWS = 2000


class Base(DeclarativeBase):
    pass


class Chunk(vecorm.Searchable, Base):
    __tablename__ = "chunks"
    __vecorm__ = vecorm.SearchConfig(fields=("title",), dimensions=DIMS, text_index=False)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(20))


class TenantChunk(vecorm.Searchable, Base):
    __tablename__ = "tenant_chunks"
    __table_args__ = {"postgresql_partition_by": "LIST (tenant_id)"}
    __vecorm__ = vecorm.SearchConfig(
        fields=("title",), dimensions=DIMS, text_index=False, index=vecorm.HNSW(precision="halfvec")
    )
    tenant_id: Mapped[int] = mapped_column(primary_key=True)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(20))


INDEX = "ix_chunks_embedding_hnsw"


@pytest.fixture
def filled(vecorm_engine: Engine) -> Engine:
    """Rows without their vector index (dropped after create_all), analysed."""
    Base.metadata.create_all(vecorm_engine)
    vectors = np.random.default_rng(1).normal(size=(ROWS, DIMS)).astype(np.float32)
    rows = [{"id": i, "title": "t", "embedding": v} for i, v in enumerate(vectors)]
    with vecorm_engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {INDEX}"))
        # Partitions made while the parent has no vector index (an index added later).
        conn.execute(text("DROP INDEX ix_tenant_chunks_embedding_halfvec_hnsw"))
        create_partition(conn, TenantChunk, "tenant_chunks_0", values=[0])
        create_partition(conn, TenantChunk, "tenant_chunks_1", values=[1])
        conn.execute(insert(Chunk), rows)
        conn.execute(insert(TenantChunk), [{**row, "tenant_id": row["id"] % 2} for row in rows])
        conn.execute(text("ANALYZE"))
    return vecorm_engine


def _autocommit(engine: Engine) -> object:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def test_memory_settings_and_estimates() -> None:
    assert parse_memory("64MB") == 64 * 2**20 and parse_memory("2GB") == 2 * 2**30
    assert parse_memory(65536) == 64 * 2**20  # kB, like PostgreSQL
    assert format_memory(64 * 2**20) == "64MB" and format_memory(5 * 2**30) == "5GB"
    with pytest.raises(vecorm.ConfigurationError, match="must look like '512MB'"):
        parse_memory("lots")
    # 1M x 1536 float vectors: about 7 GB of graph; halfvec about half, bit a fraction.
    full = estimate_hnsw_memory(1_000_000, 1536)
    assert 6 * 2**30 < full < 8 * 2**30
    assert estimate_hnsw_memory(1_000_000, 1536, precision="halfvec") < 0.6 * full
    assert estimate_hnsw_memory(1_000_000, 1536, precision="bit") < 0.15 * full


def test_concurrent_build_with_progress_and_statement_only_settings(filled: Engine) -> None:
    samples: list[BuildProgress] = []
    with _autocommit(filled) as conn:  # type: ignore[attr-defined]
        before = conn.execute(select(func.current_setting("maintenance_work_mem"))).scalar()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # fits: no warning
            report = build_index(
                conn,
                model_vector_index(Chunk),
                maintenance_work_mem="256MB",
                parallel_workers=1,
                progress=samples.append,
                poll_interval=0.01,
            )
        after = conn.execute(select(func.current_setting("maintenance_work_mem"))).scalar()
        workers = conn.execute(
            select(func.current_setting("max_parallel_maintenance_workers"))
        ).scalar()
    assert before == after == "64MB" and workers == "2"  # put back after the statement
    assert report.index == INDEX and report.size_bytes > 1_000_000
    assert report.maintenance_work_mem == 256 * 2**20
    assert report.estimated_bytes is not None and report.notices == ()
    assert samples, "no progress sample was read during the build"
    assert all(sample.phase for sample in samples)
    # pgvector reports heap blocks while it loads tuples into the graph.
    loading = [sample for sample in samples if sample.phase == "building index: loading tuples"]
    assert loading and all(0 <= s.done <= s.total for s in loading), samples
    assert loading[-1].done > loading[0].done or len(loading) == 1
    with filled.connect() as conn:
        found = indexes(conn, "chunks")[INDEX]
        assert found.method == "hnsw" and "CONCURRENTLY" not in found.definition
        valid = conn.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = CAST(:n AS regclass)"),
            {"n": INDEX},
        ).scalar()
    assert valid is True


def test_warns_before_a_build_that_does_not_fit(filled: Engine) -> None:
    with (
        _autocommit(filled) as conn,  # type: ignore[attr-defined]
        pytest.warns(IndexBuildMemoryWarning) as caught,
    ):
        report = build_index(conn, model_vector_index(Chunk), maintenance_work_mem="1MB")
    messages = [str(warning.message) for warning in caught]
    # vecorm's estimate, before the build ...
    assert "needs about" in messages[0] and "maintenance_work_mem is 1MB" in messages[0]
    # ... and pgvector's own notice, which proves the setting reached the build.
    assert any("hnsw graph no longer fits into maintenance_work_mem" in m for m in messages)
    assert any("hnsw graph no longer fits" in notice for notice in report.notices)


def test_invalid_leftover_is_rebuilt_and_reindex(filled: Engine) -> None:
    with filled.begin() as conn:
        conn.execute(
            text(f"CREATE INDEX {INDEX} ON chunks USING hnsw (embedding vector_cosine_ops)")
        )
        # What a failed CREATE INDEX CONCURRENTLY leaves behind.
        conn.execute(
            text("UPDATE pg_index SET indisvalid = false WHERE indexrelid = CAST(:n AS regclass)"),
            {"n": INDEX},
        )
    report = build_model_index(filled, Chunk)
    rebuilt = build_model_index(filled, Chunk, rebuild=True)
    with filled.connect() as conn:
        valid = conn.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = CAST(:n AS regclass)"),
            {"n": INDEX},
        ).scalar()
    assert valid is True and report.size_bytes > 0 and rebuilt.seconds > 0


def test_partitioned_table_builds_each_partition_concurrently(filled: Engine) -> None:
    report = build_model_index(filled, TenantChunk)
    assert report.partitions == ("tenant_chunks_0", "tenant_chunks_1")
    with filled.connect() as conn:
        infos = check_partition_indexes(conn, TenantChunk)
        assert all("ix_tenant_chunks_embedding_halfvec_hnsw" in info.indexes for info in infos)
        child = indexes(conn, "tenant_chunks_0")["ix_tenant_chunks_0_embedding_halfvec_hnsw"]
        assert "((embedding)::halfvec(128)) halfvec_cosine_ops" in child.definition
        valid = conn.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = CAST(:n AS regclass)"),
            {"n": "ix_tenant_chunks_embedding_halfvec_hnsw"},
        ).scalar()
    assert valid is True


def test_concurrently_needs_autocommit(filled: Engine) -> None:
    with filled.connect() as conn, pytest.raises(IndexBuildError, match="AUTOCOMMIT"):
        build_index(conn, model_vector_index(Chunk))


def test_alembic_operation_with_memory_settings(filled: Engine) -> None:
    with filled.connect() as conn:
        context = MigrationContext.configure(conn)
        op = Operations(context)
        with context.begin_transaction(), pytest.warns(IndexBuildMemoryWarning) as caught:
            op.create_vector_index(  # type: ignore[attr-defined]
                INDEX,
                "chunks",
                "embedding",
                concurrently=True,
                maintenance_work_mem="2MB",
                parallel_workers=0,
            )
        assert "needs about" in str(caught[0].message)
        assert conn.execute(select(func.current_setting("maintenance_work_mem"))).scalar() == "64MB"
    with filled.connect() as conn:
        assert indexes(conn, "chunks")[INDEX].method == "hnsw"


def test_cli_build_index(
    filled: Engine, vecorm_url: URL, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parents[2]))
    result = CliRunner().invoke(
        main,
        [
            "build-index",
            "tests.integration.test_index_build:Chunk",
            "--database-url",
            vecorm_url.render_as_string(hide_password=False),
            "--memory",
            "256MB",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"built {INDEX}" in result.output
    with filled.connect() as conn:
        assert INDEX in indexes(conn, "chunks")


def test_build_gives_up_on_a_session_idle_in_transaction(filled: Engine) -> None:
    """The wait for older transactions is bounded and names them; no index is created."""
    with filled.connect() as idle:
        idle = idle.execution_options(isolation_level="REPEATABLE READ")  # keeps its snapshot
        idle.execute(text("SET application_name = 'stuck-worker'"))
        idle.execute(select(Chunk.id).limit(1)).all()
        pid = idle.execute(text("SELECT pg_backend_pid()")).scalar_one()
        started = time.monotonic()
        with pytest.raises(IndexBuildBlocked, match=f"pid {pid} \\(idle in transaction"):
            build_model_index(filled, Chunk, wait_timeout="1s")
        assert 0.9 < time.monotonic() - started < 4
        idle.rollback()
    with filled.connect() as conn:
        assert INDEX not in indexes(conn, "chunks")
    assert build_model_index(filled, Chunk, wait_timeout=5).index == INDEX


def test_lock_timeout_bounds_the_wait_for_old_snapshots_and_drops_the_invalid_index(
    filled: Engine,
) -> None:
    """A transaction begun after the check but before the build's snapshot wait: PostgreSQL
    waits on its virtualxid, lock_timeout ends that wait, the INVALID index is dropped."""
    index = model_vector_index(Chunk)
    with filled.connect() as late, _autocommit(filled) as builder:  # type: ignore[attr-defined]
        late = late.execution_options(isolation_level="REPEATABLE READ")
        late.execute(text("SET application_name = 'late-reader'"))
        pid = late.execute(text("SELECT pg_backend_pid()")).scalar_one()
        late.commit()  # no transaction until build() begins one

        def build() -> None:
            late.execute(text("SELECT 1")).all()  # takes its snapshot now, holds no table lock
            index.dialect_options["postgresql"]["concurrently"] = True
            try:
                builder.execute(CreateIndex(index))
            finally:
                index.dialect_options["postgresql"]["concurrently"] = False

        started = time.monotonic()
        with pytest.raises(IndexBuildBlocked) as raised:
            run_concurrently(builder, build, index=INDEX, wait_timeout=1)
        assert 0.9 < time.monotonic() - started < 4
        assert isinstance(raised.value.__cause__, OperationalError)
        assert "lock timeout" in str(raised.value.__cause__)
        assert f"pid {pid} (idle in transaction, application_name='late-reader'" in str(
            raised.value
        )
        assert "INVALID" not in str(raised.value)
        assert builder.execute(text("SHOW lock_timeout")).scalar() == "0"  # put back
        late.rollback()
    with filled.connect() as conn:
        assert INDEX not in indexes(conn, "chunks")  # the INVALID leftover was dropped
