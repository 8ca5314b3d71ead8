"""The ``vecorm`` command through click's CliRunner: demo, backfill, doctor, bench, mistakes."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import URL, create_engine, func, insert, select, text

import vecorm
from tests.e2e.conftest import url_text
from vecorm.embedding.embedders.registry import local_model_available
from vecorm.testing.openai_server import OpenAIServer
from vecorm.tools.cli import main
from vecorm.tools.demo import EXACT_TERM_QUESTIONS, QUESTIONS


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, prog_name="vecorm")


DISTANCE_LINE = re.compile(r"^   (\d\.\d{3})  \[\w+\] .+$")


def demo_sections(output: str) -> dict[str, list[str]]:
    """Question -> its lines, from the demo's output."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("Q: "):
            current = sections.setdefault(line[3:], [])
        elif line.startswith(("Exact terms:", "Done in")):
            current = []
        elif line.strip():
            current.append(line)
    return sections


# --------------------------------------------------------------------------- demo


def test_demo_with_the_default_embedder_on_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's command: no URL, no embedder named. A key in the environment is ignored."""
    monkeypatch.delenv("VECORM_DATABASE_URL", raising=False)
    with OpenAIServer() as fake_openai:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-be-used")
        monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
        result = invoke("demo")
        assert fake_openai.requests == []  # no remote API, key or not
    assert result.exit_code == 0, result.output
    output = result.output
    expected = "all-MiniLM-L6-v2" if local_model_available() else "deterministic hashing"
    assert f"Embedder: {expected}" in output
    assert re.search(r"Server:   PostgreSQL 18\.\d+ \+ pgvector 0\.8\.\d+", output)
    assert "Loaded 65 passages into vecorm_demo_passages" in output
    sections = demo_sections(output)
    for question in QUESTIONS:
        distances = [float(m.group(1)) for m in map(DISTANCE_LINE.match, sections[question]) if m]
        assert len(distances) == 3 and distances == sorted(distances)
        assert all(0.0 <= value <= 2.0 for value in distances)
    for question, _ in EXACT_TERM_QUESTIONS:
        lines = sections[question]
        assert lines[0].split() == [
            "semantic",
            "(cosine",
            "distance)",
            "hybrid",
            "(fused",
            "score)",
        ]
        assert lines[-1].endswith("#1 by hybrid search")  # the term's passage wins in hybrid
    if local_model_available():
        # The bloat passage answers the second question best for the real model.
        assert "Table bloat after mass deletes" in sections[QUESTIONS[1]][0]
    seconds = float(re.search(r"Done in (\d+\.\d) s\.", output).group(1))  # type: ignore[union-attr]
    assert seconds < 60


def test_demo_with_hashing_on_a_given_database(vecorm_url: URL) -> None:
    result = invoke("demo", "--embedder", "hashing", "--database-url", url_text(vecorm_url))
    assert result.exit_code == 0, result.output
    sections = demo_sections(result.output)
    # Deterministic embedder: exact ranks. Semantic search misses the error codes; hybrid has them.
    assert sections["what does SQLSTATE 40P01 mean?"][-1] == (
        "   answer ranked below #10 by semantic search, #1 by hybrid search"
    )
    assert sections["FATAL 53300"][-1] == (
        "   answer ranked #8 by semantic search, #1 by hybrid search"
    )
    first_hybrid = sections["what does SQLSTATE 40P01 mean?"][1][51:]
    assert first_hybrid.startswith("1 * ") and "Deadlocks between transactions" in first_hybrid
    engine = create_engine(vecorm_url)
    with engine.connect() as conn:  # the demo cleans up after itself
        assert conn.scalar(select(func.to_regclass("vecorm_demo_passages"))) is None
    engine.dispose()


def test_demo_uses_openai_only_when_named(vecorm_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    with OpenAIServer() as fake_openai:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
        result = invoke("demo", "--embedder", "openai", "--database-url", url_text(vecorm_url))
        requests = fake_openai.requests
    assert result.exit_code == 0, result.output
    assert "Embedder: openai:text-embedding-3-small:384 (384-d)" in result.output
    assert requests and all(request.body["dimensions"] == 384 for request in requests)
    assert sum(len(request.inputs) for request in requests) >= 65


def test_demo_openai_without_a_key_is_one_line(vecorm_url: URL) -> None:
    result = CliRunner().invoke(
        main, ["demo", "--embedder", "openai", "--database-url", url_text(vecorm_url)]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "OPENAI_API_KEY" in result.stderr
    assert result.stderr.startswith("Error: ")


# --------------------------------------------------------------------------- backfill

MODELS_SOURCE = '''
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.embedding.embedders import HashingEmbedder


class Base(DeclarativeBase):
    pass


class Product(vecorm.Searchable, Base):
    __tablename__ = "products"
    __vecorm__ = vecorm.SearchConfig(
        fields=("name", "description"),
        dimensions=32,
        embedder=HashingEmbedder(dimensions=32),
        index=vecorm.HNSW(ef_search=40),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    description: Mapped[str]


class OtherBase(DeclarativeBase):
    pass


class WrongWidth(vecorm.Searchable, OtherBase):
    """Declares the products table with another width, as after a half-done model change."""

    __tablename__ = "products"
    __vecorm__ = vecorm.SearchConfig(fields=("name",), dimensions=48)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80))


class Missing(vecorm.Searchable, OtherBase):
    __tablename__ = "no_such_table"
    __vecorm__ = vecorm.SearchConfig(fields=("name",), dimensions=32)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Flaky:
    """Fails on its third call: an interrupted backfill."""

    dimensions = 32
    model_name = "vecorm-hashing-32"
    max_batch_size = 256

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("provider fell over")
        return HashingEmbedder(dimensions=32).embed(texts)


flaky = Flaky()
narrow = HashingEmbedder(dimensions=16)
'''


@pytest.fixture
def models_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A project directory with a models module, as the current directory."""
    name = f"shop_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODELS_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _create_products(url: URL, module: str, rows: int) -> None:
    """The table, and ``rows`` products written by raw SQL (no hook: all stale)."""
    models = __import__(module)
    engine = vecorm.create_engine(url)
    models.Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(models.Product.__table__),
            [{"name": f"Product {i}", "description": f"widget number {i}"} for i in range(rows)],
        )
    engine.dispose()


def _embedded_rows(url: URL) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        done = conn.scalar(
            text(
                "SELECT count(*) FROM products WHERE embedding IS NOT NULL "
                "AND embedding_digest IS NOT NULL AND embedding_model = 'vecorm-hashing-32'"
            )
        )
        total = conn.scalar(text("SELECT count(*) FROM products"))
    engine.dispose()
    return int(done or 0), int(total or 0)


def test_backfill_embeds_stale_rows_and_resumes(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 50)
    url = url_text(vecorm_url)

    # Interrupted on its third provider call: two batches of 10 are committed, then one line.
    broken = CliRunner().invoke(
        main,
        [
            "backfill",
            f"{models_module}:Product",
            "--database-url",
            url,
            "--batch-size",
            "10",
            "--embedder",
            f"{models_module}:flaky",
            "--no-progress",
        ],
    )
    assert broken.exit_code == 1
    assert "Traceback" not in broken.output
    assert broken.stderr.startswith("Error: ") and "provider fell over" in broken.stderr
    assert _embedded_rows(vecorm_url) == (20, 50)

    # Run again: carries on with the 30 rows left; no bar by default off a terminal ...
    quiet = invoke(
        "backfill", f"{models_module}:Product", "--database-url", url, "--batch-size", "5"
    )
    assert quiet.exit_code == 0 and "backfill Product" not in quiet.stderr
    assert quiet.stdout.startswith("Product: embedded 30 rows in 6 batches")
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:  # make the 30 rows stale again
        conn.execute(text("UPDATE products SET embedding = NULL WHERE id > 20"))
    engine.dispose()
    # ... and a bar on stderr when asked for.
    result = invoke(
        "backfill",
        f"{models_module}:Product",
        "--database-url",
        url,
        "--batch-size",
        "10",
        "--progress",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Product: embedded 30 rows in 3 batches (3 provider calls")
    assert "backfill Product" in result.stderr and "30/30" in result.stderr
    assert _embedded_rows(vecorm_url) == (50, 50)

    again = invoke("backfill", f"{models_module}:Product", "--database-url", url)
    assert again.stdout == "Product: nothing to embed, every row is up to date\n"


def test_backfill_reads_the_url_from_the_environment(
    vecorm_url: URL, models_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create_products(vecorm_url, models_module, 5)
    monkeypatch.delenv("VECORM_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", url_text(vecorm_url))
    result = invoke("backfill", f"{models_module}:Product", "--no-progress")
    assert result.stdout.startswith("Product: embedded 5 rows in 1 batches")


# --------------------------------------------------------------------------- doctor


def _doctor(url: URL, *args: str) -> Result:
    return CliRunner().invoke(main, ["doctor", *args, "--database-url", url_text(url)])


def _lines(result: Result) -> list[str]:
    return [" ".join(line.split()) for line in result.stdout.splitlines()]


def test_doctor_on_a_healthy_model(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 3000)  # enough rows to prefer the index
    assert (
        invoke(
            "backfill",
            f"{models_module}:Product",
            "--database-url",
            url_text(vecorm_url),
            "--no-progress",
        ).exit_code
        == 0
    )
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE products"))
    engine.dispose()

    result = _doctor(vecorm_url, f"{models_module}:Product")
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert any(re.fullmatch(r"ok server PostgreSQL 18\.\d+, database \S+", line) for line in lines)
    assert any(
        re.fullmatch(r"ok pgvector vector extension 0\.8\.\d+ installed", line) for line in lines
    )
    assert "ok Product table products: 3000 rows, embedding vector(32)" in lines
    assert "ok Product embedder vecorm-hashing-32 (32-d)" in lines
    assert "ok Product full-text index ix_products_search_vector_gin present" in lines
    assert "ok Product BM25 statistics tables, triggers and functions up to date" in lines
    assert "ok Product EXPLAIN nearest(k=10): Index Scan using ix_products_embedding_hnsw" in lines
    assert any(
        re.fullmatch(
            r"ok Product ix_products_embedding_hnsw is [\d,.]+ [kM]B, shared_buffers [\d,.]+ [kM]B",
            line,
        )
        for line in lines
    ), lines
    assert "ok Product no stale rows: every row with text is embedded by vecorm-hashing-32" in lines
    assert lines[-1] == "all checks passed"


def test_doctor_reports_problems_with_hints(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 12)  # 12 stale rows, few enough to scan
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_products_search_vector_gin"))
        conn.execute(text("DROP TRIGGER products_bm25_update ON products"))
    engine.dispose()
    result = _doctor(
        vecorm_url,
        f"{models_module}:Product",
        f"{models_module}:WrongWidth",
        f"{models_module}:Missing",
    )
    assert result.exit_code == 1
    lines = _lines(result)
    assert (
        "WARN Product full-text index ix_products_search_vector_gin is missing: text and "
        "hybrid search scan every row"
    ) in lines
    # Unfiltered, nearest() is an index search even on 12 rows (enable_sort = off).
    assert "ok Product EXPLAIN nearest(k=10): Index Scan using ix_products_embedding_hnsw" in lines
    assert (
        "FAIL Product BM25 triggers missing (products_bm25_update): the statistics go stale on "
        "writes" in lines
    )
    stale = lines.index(
        "WARN Product 12 of 12 rows are stale (no embedding, edited text, or another model)"
    )
    assert lines[stale + 1] == f"hint: vecorm backfill {models_module}:Product"
    assert (
        "FAIL WrongWidth products.embedding is vector(32), the model declares vector(48)" in lines
    )
    missing = lines.index("FAIL Missing table no_such_table does not exist")
    assert lines[missing + 1].startswith("hint: create it: `alembic upgrade head`")
    assert lines[-1] == "4 problems found"  # the trigger counts for Product and WrongWidth


def test_doctor_reports_statistics_of_another_expression(
    vecorm_url: URL, models_module: str
) -> None:
    _create_products(vecorm_url, models_module, 12)
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE products SET description = 'running widgets'"))  # stemmed
        # A hand-written migration: the table rewrite fires no trigger.
        expression = conn.scalar(
            text(
                "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a "
                "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
                "WHERE d.adrelid = 'products'::regclass AND a.attname = 'search_vector'"
            )
        )
        simple = str(expression).replace("'english'", "'simple'")
        conn.execute(
            text(f"ALTER TABLE products ALTER COLUMN search_vector SET EXPRESSION AS ({simple})")
        )
    result = _doctor(vecorm_url, f"{models_module}:Product")
    lines = _lines(result)
    drift = [line for line in lines if line.startswith("FAIL Product BM25 postings")]
    assert len(drift) == 1 and "the statistics are stale" in drift[0], lines
    assert lines[lines.index(drift[0]) + 1].startswith("hint: rebuild them")
    with engine.begin() as conn:
        conn.execute(text("COMMENT ON FUNCTION products_bm25_insert() IS 'vecorm bm25 0'"))
    lines = _lines(_doctor(vecorm_url, f"{models_module}:Product"))
    assert any(line.startswith("FAIL Product BM25 functions differ") for line in lines), lines
    engine.dispose()


def test_doctor_reports_a_provider_of_the_wrong_width(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 1)
    result = _doctor(
        vecorm_url, f"{models_module}:Product", "--embedder", f"{models_module}:narrow"
    )
    assert result.exit_code == 1
    assert (
        "FAIL Product embedder 'vecorm-hashing-16' returns 16 values, the column holds 32"
        in _lines(result)
    )


def test_doctor_without_the_extension(vecorm_url: URL) -> None:
    engine = create_engine(vecorm_url)
    with engine.begin() as conn:
        conn.execute(text("DROP EXTENSION vector"))
    engine.dispose()
    result = _doctor(vecorm_url)
    assert result.exit_code == 1
    lines = _lines(result)
    assert any(
        line.startswith("FAIL pgvector the vector extension is missing from database ")
        for line in lines
    )
    assert "hint: run CREATE EXTENSION vector, or op.create_vector_extension() in a migration" in (
        lines
    )


def test_doctor_json_is_one_document_on_stdout(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 12)
    result = _doctor(vecorm_url, "--json", f"{models_module}:Product", f"{models_module}:Missing")
    assert result.exit_code == 1  # a failed check still fails the command
    report = json.loads(result.stdout)  # all of stdout is the document
    assert report["ok"] is False and report["problems"] == 1 and report["warnings"] == 1
    assert report["database"] == vecorm_url.render_as_string()
    assert result.stderr.startswith("vecorm doctor: ")  # what is being checked: stderr
    by_subject: dict[str, list[dict[str, object]]] = {}
    for finding in report["findings"]:
        assert set(finding) == {"status", "subject", "message", "hint"}
        by_subject.setdefault(str(finding["subject"]), []).append(finding)
    assert [finding["status"] for finding in by_subject["server"]] == ["ok"]
    assert by_subject["Missing"] == [
        {
            "status": "fail",
            "subject": "Missing",
            "message": "table no_such_table does not exist",
            "hint": "create it: `alembic upgrade head`, or metadata.create_all(engine)",
        }
    ]
    stale = [f for f in by_subject["Product"] if f["status"] == "warn"]
    assert stale == [
        {
            "status": "warn",
            "subject": "Product",
            "message": "12 of 12 rows are stale (no embedding, edited text, or another model)",
            "hint": f"vecorm backfill {models_module}:Product",
        }
    ]
    healthy = _doctor(vecorm_url, "--json")
    assert healthy.exit_code == 0 and json.loads(healthy.stdout)["ok"] is True


# --------------------------------------------------------------------------- bench


def test_bench_prints_the_table_and_writes_the_plot(vecorm_url: URL, tmp_path: Path) -> None:
    plot = tmp_path / "out" / "bench.png"
    result = invoke(
        "bench",
        "--rows",
        "2000",
        "--dimensions",
        "128",
        "--queries",
        "20",
        "--plot",
        str(plot),
        "--database-url",
        url_text(vecorm_url),
    )
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("none", "ivfflat", "hnsw"):
            rows[(parts[0], parts[1])] = (float(parts[2]), float(parts[3]), parts[5])
    assert rows[("none", "exact")][0] == 1.0 and rows[("none", "exact")][2] == "Seq"
    probes = [key for key in rows if key[0] == "ivfflat"]
    assert [key[1] for key in probes] == [
        "probes=1",
        "probes=2",
        "probes=4",
        "probes=8",
        "probes=16",
        "probes=32",
        "probes=45",
    ]
    assert rows[("ivfflat", "probes=45")][0] == 1.0  # every list probed: exact
    assert rows[("ivfflat", "probes=1")][0] < 0.5
    assert rows[("hnsw", "ef_search=320")][0] >= 0.95
    assert rows[("hnsw", "ef_search=10")][0] < rows[("hnsw", "ef_search=320")][0]
    assert all(
        plan == "ix_vecorm_bench_vectors_ivfflat"
        for (kind, _), (_, _, plan) in rows.items()
        if kind == "ivfflat"
    )
    assert all(
        plan == "ix_vecorm_bench_vectors_hnsw"
        for (kind, _), (_, _, plan) in rows.items()
        if kind == "hnsw"
    )
    assert "loading 2,000 random 128-d vectors" in result.stderr
    assert result.stdout.rstrip().endswith(f"plot: {plot}")
    data = plot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


# --------------------------------------------------------------------------- mistakes


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (
            ["backfill", "nosuch.module:Model", "--database-url", "postgresql://u@localhost/x"],
            "cannot import 'nosuch.module'",
            "run from your project's root",
        ),
        (
            [
                "backfill",
                "vecorm.tools.demo:Pasage",
                "--database-url",
                "postgresql://u@localhost/x",
            ],
            "'vecorm.tools.demo' has no attribute 'Pasage'",
            "check the class name",
        ),
        (
            ["backfill", "Model", "--database-url", "postgresql://u@localhost/x"],
            "'Model' is not MODULE:MODEL",
            "myapp.models:Document",
        ),
        (
            [
                "backfill",
                "vecorm.schema.config:HNSW",
                "--database-url",
                "postgresql://u@localhost/x",
            ],
            "vecorm.schema.config:HNSW is not a searchable model",
            "inherit vecorm.Searchable",
        ),
        (
            ["doctor", "--database-url", "not a url"],
            "not a database URL: 'not a url'",
            "--database-url postgresql://",
        ),
        (
            ["doctor", "--database-url", "mysql://u@localhost/x"],
            "vecorm needs PostgreSQL",
            "--database-url postgresql://",
        ),
        (
            ["doctor", "--database-url", "postgresql://nobody@127.0.0.1:1/x"],
            "cannot reach the database: connection failed",
            "check that the server is running",
        ),
        (
            ["demo", "--database-url", "postgresql://nobody@127.0.0.1:1/x"],
            "cannot reach the database",
            "check that the server is running",
        ),
        (
            [
                "bench",
                "--no-plot",
                "--rows",
                "10",
                "--lists",
                "50",
                "--database-url",
                "postgresql://nobody@127.0.0.1:1/x",
            ],
            "lists (50) cannot exceed rows",
            None,
        ),
    ],
)
def test_user_mistakes_are_one_line_and_a_hint(
    args: list[str], message: str, hint: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: ") and message in lines[0]
    if hint is None:
        assert len(lines) == 1
    else:
        assert len(lines) == 2 and lines[1].startswith("hint: ") and hint in lines[1]


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--frobnicate"],
        ["bench", "--rows", "5"],
        ["demo", "--embedder", "gpt-5"],
        ["backfill"],
    ],
)
def test_usage_errors_exit_2_with_a_hint(args: list[str]) -> None:
    result = CliRunner().invoke(main, args, prog_name="vecorm")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Try 'vecorm " in result.stderr and "--help' for help." in result.stderr
    assert "Error: " in result.stderr


def test_backfill_of_a_table_that_does_not_exist(vecorm_url: URL, models_module: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "backfill",
            f"{models_module}:Missing",
            "--embedder",
            "hashing",
            "--database-url",
            url_text(vecorm_url),
        ],
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        'Error: the database refused a query: relation "no_such_table" does not exist',
        "hint: create the schema first (`alembic upgrade head` or metadata.create_all)",
    ]


def test_backfill_needs_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VECORM_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["backfill", "vecorm.tools.demo:Passage"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: no database given",
        "hint: pass --database-url postgresql://user:password@host:5432/dbname or set "
        "$VECORM_DATABASE_URL",
    ]
