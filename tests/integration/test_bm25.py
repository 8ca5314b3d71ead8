"""BM25 in SQL: scores equal a reference implementation, statistics stay exact whatever
writes the rows (8 concurrent writers included), hostile text never errors."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, delete, func, insert, literal, select, text, union_all, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import vecorm
from vecorm import bm25
from vecorm.schema.config import BM25
from vecorm.testing.assertions import indexes_used


class Base(DeclarativeBase):
    pass


class Note(vecorm.Searchable, Base):
    __tablename__ = "notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"), dimensions=4, index=None, bm25=BM25(k1=1.2, b=0.75)
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]
    category: Mapped[str] = mapped_column(String(20), server_default="general")


class PrunedNote(vecorm.Searchable, Base):
    """MaxScore pruning from the config: every query with more than one posting is pruned."""

    __tablename__ = "pruned_notes"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "body"),
        dimensions=4,
        index=None,
        bm25=BM25(k1=1.2, b=0.75, prune_above=1, seed=3),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str]
    category: Mapped[str] = mapped_column(String(20))


class Part(vecorm.Searchable, Base):
    """Composite primary key."""

    __tablename__ = "parts"
    __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=4, index=None)
    doc: Mapped[str] = mapped_column(String(10), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


WORDS = [
    "vacuum",
    "table",
    "index",
    "query",
    "planner",
    "statistics",
    "bloat",
    "autovacuum",
    "replication",
    "standby",
    "lag",
    "checkpoint",
    "wal",
    "archive",
    "backup",
    "restore",
    "partition",
    "lock",
    "deadlock",
    "transaction",
    "snapshot",
]


def sentence(rng: np.random.Generator, length: int) -> str:
    # Zipf-like: a few words are in most rows, so df varies widely.
    weights = 1.0 / np.arange(1, len(WORDS) + 1)
    picks = rng.choice(len(WORDS), size=length, p=weights / weights.sum())
    return " ".join(WORDS[i] for i in picks)


def rows(count: int, seed: int = 0, start: int = 1) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "id": start + i,
            "title": sentence(rng, int(rng.integers(1, 4))),
            "body": sentence(rng, int(rng.integers(0, 30))),
            "category": "even" if i % 2 == 0 else "odd",
        }
        for i in range(count)
    ]


@pytest.fixture
def engine(vecorm_engine: Engine) -> Engine:
    Base.metadata.create_all(vecorm_engine)
    return vecorm_engine


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(120))
    with Session(engine) as session:
        yield session


# ----------------------------------------------------------------- reference BM25


def documents(session: Session) -> dict[int, Counter[str]]:
    """Lexeme counts per row, read from the generated tsvector itself."""
    found: dict[int, Counter[str]] = {
        row_id: Counter() for row_id in session.scalars(select(Note.id))
    }
    for row_id, lexeme, count in session.execute(
        text(
            "SELECT id, u.lexeme, coalesce(array_length(u.positions, 1), 1) "
            "FROM notes, unnest(search_vector) u"
        )
    ):
        found[row_id][lexeme] = count
    return found


def query_lexemes(session: Session, query: str) -> Counter[str]:
    return Counter(
        dict(
            session.execute(  # type: ignore[arg-type]
                text(
                    "SELECT u.lexeme, array_length(u.positions, 1) "
                    "FROM unnest(to_tsvector('english', :q)) u"
                ),
                {"q": query},
            ).all()
        )
    )


def reference_bm25(
    docs: dict[int, Counter[str]], query: Counter[str], k1: float, b: float
) -> dict[int, float]:
    """Lucene's BM25 (idf = ln(1 + (N - df + .5) / (df + .5))), query terms with counts."""
    n = len(docs)
    lengths = {key: sum(counts.values()) for key, counts in docs.items()}
    avgdl = sum(lengths.values()) / n
    df = Counter(term for counts in docs.values() for term in counts)
    scores: dict[int, float] = {}
    for term, qtf in query.items():
        if df[term] == 0:
            continue
        idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
        for key, counts in docs.items():
            tf = counts.get(term, 0)
            if tf:
                part = tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[key] / avgdl))
                scores[key] = scores.get(key, 0.0) + qtf * idf * part
    return scores


QUERIES = [
    "vacuum",
    "vacuum table index",
    "deadlock deadlocks snapshot snapshot",
    "standby lag during a checkpoint",
    "partition archive restore backup",
]


def assert_scores_match(session: Session, **options: object) -> None:
    docs = documents(session)
    for query in QUERIES:
        expected = reference_bm25(docs, query_lexemes(session, query), 1.2, 0.75)
        got = session.execute(bm25.scores(Note, query, depth=1000, **options)).all()  # type: ignore[arg-type]
        assert {row.pk_0 for row in got} == set(expected), query
        for row in got:
            assert row.score == pytest.approx(expected[row.pk_0], rel=1e-6, abs=1e-9), query
        ordered = [row.score for row in got]
        assert ordered == sorted(ordered, reverse=True)


@pytest.mark.parametrize("prune_above", [None, 1, "config"])
def test_scores_equal_a_reference_bm25(session: Session, prune_above: object) -> None:
    assert_scores_match(session, prune_above=prune_above)


def test_scores_stay_equal_after_updates_and_deletes(session: Session) -> None:
    session.execute(update(Note).where(Note.id <= 30).values(body=Note.body + " vacuum vacuum"))
    session.execute(delete(Note).where(Note.id.between(50, 70)))
    session.execute(insert(Note), rows(15, seed=3, start=500))
    assert_scores_match(session)  # inside the writing transaction
    session.commit()
    assert_scores_match(session)


@pytest.mark.parametrize("seed", [1, 3, 20])
def test_pruning_is_exact(session: Session, seed: int) -> None:
    """Few postings per term only seed the threshold: the top rows and scores stay exact."""
    docs = documents(session)
    for query in QUERIES:
        expected = reference_bm25(docs, query_lexemes(session, query), 1.2, 0.75)
        best = sorted(expected, key=lambda key: (-expected[key], key))[:5]
        got = session.execute(bm25.scores(Note, query, depth=5, prune_above=1, seed=seed)).all()
        assert [row.pk_0 for row in got] == best, query
        for row in got:
            assert row.score == pytest.approx(expected[row.pk_0], rel=1e-6)


def test_two_pruned_scorers_in_one_statement(session: Session) -> None:
    """``prefix`` names every CTE of a scorer, the MaxScore ones included: two scorers pruned
    by their model's config share one statement and each returns what it returns alone."""
    session.execute(insert(PrunedNote), rows(120))
    first = bm25.scores(PrunedNote, "vacuum table", depth=5, prefix="a")
    second = bm25.scores(PrunedNote, "index lock lock", depth=5, prefix="b")
    sql = str(select(first.subquery(), second.subquery()).compile(session.get_bind()))
    assert "a_candidates" in sql and "b_candidates" in sql  # both take the MaxScore branch
    alone = {
        "a": [(row.pk_0, row.score) for row in session.execute(first)],
        "b": [(row.pk_0, row.score) for row in session.execute(second)],
    }
    assert len(alone["a"]) == len(alone["b"]) == 5
    left, right = first.subquery(), second.subquery()
    both = union_all(
        select(literal("a").label("scorer"), left.c.pk_0, left.c.score),
        select(literal("b").label("scorer"), right.c.pk_0, right.c.score),
    ).subquery()
    together: dict[str, list[tuple[int, float]]] = {"a": [], "b": []}
    for row in session.execute(
        select(both).order_by(both.c.scorer, both.c.score.desc(), both.c.pk_0)
    ):
        together[row.scorer].append((row.pk_0, row.score))
    for scorer in ("a", "b"):
        assert [key for key, _ in together[scorer]] == [key for key, _ in alone[scorer]]
        assert [score for _, score in together[scorer]] == pytest.approx(
            [score for _, score in alone[scorer]], rel=1e-12
        )
    # And joined: the rows both scorers rank in their top 5.
    joined = select(left.c.pk_0).join(right, left.c.pk_0 == right.c.pk_0)
    assert {row[0] for row in session.execute(joined)} == {key for key, _ in alone["a"]} & {
        key for key, _ in alone["b"]
    }


def test_pruning_with_a_common_and_a_rare_term(session: Session) -> None:
    """'vacuum' (in most rows) is non-essential here: rows holding only it are never
    candidates, and the rare word's rows come first with their exact scores."""
    session.execute(
        insert(Note), [{"id": 3000 + i, "title": "zebra", "body": ""} for i in range(3)]
    )
    stmt = bm25.scores(Note, "vacuum zebra", depth=3, prune_above=1, seed=2)
    assert [row.pk_0 for row in session.execute(stmt)] == [3000, 3001, 3002]


# ----------------------------------------------------------------- statistics


def assert_statistics_exact(session: Session, model: type = Note) -> None:
    """The side tables equal statistics recomputed from the rows, in this transaction."""
    tables = bm25.side_tables(model)
    name, keys = tables.table.name, ", ".join(tables.keys)
    vector = "search_vector"
    expected_terms = dict(
        session.execute(
            text(f"SELECT u.lexeme, count(*) FROM {name}, unnest({vector}) u GROUP BY u.lexeme")
        ).all()
    )
    documents_count, total = session.execute(
        text(
            f"SELECT count(*), coalesce(sum((SELECT coalesce(sum(coalesce(array_length("
            f"u.positions, 1), 1)), 0) FROM unnest({vector}) u)), 0) FROM {name}"
        )
    ).one()
    stored = dict(
        session.execute(
            text(
                f"SELECT term, sum(df) FROM (SELECT term, df FROM {name}_bm25_terms UNION ALL "
                f"SELECT term, df FROM {name}_bm25_deltas) c GROUP BY term HAVING sum(df) <> 0"
            )
        ).all()
    )
    stored_length = session.scalar(
        text(
            f"SELECT coalesce(sum(length), 0) FROM (SELECT length FROM {name}_bm25_terms "
            f"UNION ALL SELECT length FROM {name}_bm25_deltas) c"
        )
    )
    assert stored.pop("", 0) == documents_count
    assert stored_length == total
    assert stored == expected_terms
    # Every fold drops the terms it brought to no document: none is left behind.
    left_at_zero = session.scalar(
        text(f"SELECT count(*) FROM {name}_bm25_terms WHERE df = 0 AND term <> ''")
    )
    assert left_at_zero == 0
    postings = session.execute(
        text(f"SELECT {keys}, term, tf, dl FROM {name}_bm25_postings ORDER BY {keys}, term")
    ).all()
    expected_postings = session.execute(
        text(
            f"SELECT {keys}, u.lexeme, coalesce(array_length(u.positions, 1), 1), "
            f"(SELECT coalesce(sum(coalesce(array_length(v.positions, 1), 1)), 0) "
            f"FROM unnest(t.{vector}) v) FROM {name} t, unnest(t.{vector}) u "
            f"ORDER BY {keys}, u.lexeme"
        )
    ).all()
    assert postings == expected_postings


def test_statistics_after_orm_core_and_raw_sql_writes(session: Session) -> None:
    assert_statistics_exact(session)
    session.add(Note(id=1000, title="Vacuum", body="vacuum vacuum full"))
    session.add_all(Note(id=1001 + i, title="t", body=f"lock wait {i}") for i in range(3))
    session.flush()
    assert_statistics_exact(session)
    note = session.get(Note, 1000)
    assert note is not None
    note.body = "replication slot"
    session.flush()
    session.execute(text("UPDATE notes SET title = 'standby standby' WHERE id % 7 = 0"))
    session.execute(text("UPDATE notes SET id = id + 5000 WHERE id % 11 = 0"))  # key change
    session.execute(text("DELETE FROM notes WHERE id % 5 = 0"))
    session.execute(text("INSERT INTO notes (id, title, body) VALUES (9000, '', '')"))  # empty
    session.execute(text("UPDATE notes SET category = 'x'"))  # no text change
    assert_statistics_exact(session)
    session.commit()
    assert_statistics_exact(session)


def test_statistics_after_copy_and_truncate(engine: Engine, session: Session) -> None:
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        with cursor.copy("COPY notes (id, title, body) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows(40, seed=9, start=2000):
                copy.write_row((row["id"], row["title"], row["body"]))
        cursor.close()
        raw.commit()
    assert session.scalar(select(func.count()).select_from(Note)) == 160
    assert_statistics_exact(session)
    session.execute(text("TRUNCATE notes"))
    assert_statistics_exact(session)
    assert session.execute(Note.text_search("vacuum")).all() == []
    session.execute(insert(Note), rows(5, seed=4))
    assert_statistics_exact(session)
    session.rollback()  # the truncation rolls back with its statistics
    assert_statistics_exact(session)


def test_composite_keys(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(
            [Part(doc="a", seq=1, body="vacuum lock"), Part(doc="a", seq=2, body="vacuum")]
        )
        session.add(Part(doc="b", seq=1, body="lock lock"))
        session.flush()
        session.execute(update(Part).where(Part.doc == "a", Part.seq == 2).values(body="lock"))
        assert_statistics_exact(session, Part)
        got = session.execute(Part.text_search("lock", k=5)).all()
        assert [(part.doc, part.seq) for part, _ in got] == [("b", 1), ("a", 2), ("a", 1)]


def test_eight_concurrent_writers_neither_deadlock_nor_drift(engine: Engine) -> None:
    """Every writer inserts, updates and deletes rows full of the same common words."""
    with Session(engine) as setup, setup.begin():
        setup.execute(insert(Note), rows(200, seed=1))
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(worker: int) -> None:
        rng = np.random.default_rng(100 + worker)
        try:
            start.wait()
            for step in range(12):
                with Session(engine) as session, session.begin():
                    base = 10_000 + worker * 1000 + step * 10
                    session.execute(insert(Note), rows(6, seed=worker * 100 + step, start=base))
                    victims = [int(i) for i in rng.choice(200, 3, replace=False) + 1]
                    session.execute(
                        update(Note)
                        .where(Note.id.in_(victims), Note.id % 8 == worker)
                        .values(body=sentence(rng, 12))
                    )
                    session.execute(delete(Note).where(Note.id == base + 1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "writers stalled"
    assert errors == []
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Note)) == 200 + 8 * 12 * 5
        # 288 statements: the deltas were compacted into the terms table along the way.
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_terms")) > 0
        assert_statistics_exact(session)
        bm25.compact(session, Note)
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_deltas")) == 0
        assert_statistics_exact(session)
        assert_scores_match(session)


def test_bulk_load_rebuilds_once(engine: Engine) -> None:
    with Session(engine) as session:
        with bm25.bulk_load(session, Note):
            session.execute(insert(Note), rows(300, seed=7))
            # Deferred: nothing recorded yet.
            assert session.scalar(text("SELECT count(*) FROM notes_bm25_postings")) == 0
        assert_statistics_exact(session)
        session.commit()
        # Later writes are tracked again.
        session.execute(insert(Note), rows(3, seed=8, start=900))
        assert_statistics_exact(session)


def test_rebuild_backfills_rows_written_without_triggers(session: Session) -> None:
    session.execute(text("ALTER TABLE notes DISABLE TRIGGER USER"))
    session.execute(insert(Note), rows(10, seed=5, start=700))
    session.execute(text("ALTER TABLE notes ENABLE TRIGGER USER"))
    with pytest.raises(AssertionError):
        assert_statistics_exact(session)
    bm25.rebuild(session, Note)
    assert_statistics_exact(session)
    assert_scores_match(session)


def test_one_statement_writes_a_whole_batch_with_its_impacts(engine: Engine) -> None:
    """A multi-row INSERT ... SELECT and an UPDATE of many rows (empty and stop-word-only
    texts among them) are each one trigger call: counts, lengths and postings come out
    exact, and on a new table (no average-length hint yet) every posting's impact uses the
    batch's own average length."""
    with Session(engine) as session:
        session.execute(
            text(
                "INSERT INTO notes (id, title, body) SELECT i, 'vacuum ' || i, "
                "CASE WHEN i % 10 = 0 THEN '' WHEN i % 10 = 1 THEN 'the and of' "
                "ELSE repeat('index lock ', i % 4 + 1) END FROM generate_series(1, 60) i"
            )
        )
        assert_statistics_exact(session)
        documents, length = session.execute(
            text("SELECT df, length FROM notes_bm25_deltas WHERE term = ''")
        ).one()
        assert documents == 60
        average = length / documents
        k1, b = 1.2, 0.75
        for tf, dl, impact in session.execute(
            text("SELECT tf, dl, impact FROM notes_bm25_postings")
        ):
            assert impact == pytest.approx(
                tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / average)), rel=1e-6
            )
        session.execute(text("UPDATE notes SET body = body || ' wal' WHERE id % 3 = 0"))
        session.execute(text("UPDATE notes SET body = '' WHERE id % 7 = 0"))
        assert_statistics_exact(session)


def test_compaction_drops_exactly_the_terms_left_without_documents(engine: Engine) -> None:
    """Each fold drops the terms it brought to no document, looked up by key, and keeps
    every other term, including one that reaches 0 and comes back in the same fold."""
    with Session(engine) as session, session.begin():
        session.execute(
            insert(Note),
            [
                {"id": 1, "title": "kept", "body": "vacuum zeppelin"},
                {"id": 2, "title": "kept", "body": "vacuum quokka"},
                {"id": 3, "title": "kept", "body": "vacuum narwhal"},
            ],
        )
        bm25.compact(session, Note)
    with Session(engine) as session, session.begin():
        session.execute(delete(Note).where(Note.id == 1))  # zeppelin: 1 -> 0
        session.execute(delete(Note).where(Note.id == 2))  # quokka: 1 -> 0 ...
        session.add(Note(id=4, title="back", body="quokka"))  # ... -> 1 in the same fold
        session.add(Note(id=5, title="gone", body="axolotl"))  # never reaches the terms
        session.flush()
        session.execute(delete(Note).where(Note.id == 5))
        bm25.compact(session, Note)
        terms = dict(session.execute(text("SELECT term, df FROM notes_bm25_terms")).all())
        assert "zeppelin" not in terms and "axolotl" not in terms
        assert terms["quokka"] == 1 and terms["narwhal"] == 1 and terms["vacuum"] == 1
        assert session.scalar(text("SELECT count(*) FROM notes_bm25_terms WHERE df = 0")) == 0
        assert_statistics_exact(session)


# ----------------------------------------------------------------- queries


def ids(session: Session, stmt: object) -> list[int]:
    return [row[0].id for row in session.execute(stmt)]  # type: ignore[call-overload]


def test_text_search_ranks_by_bm25_with_modes_and_filters(session: Session) -> None:
    session.add_all(
        [
            Note(id=801, title="zebra", body="quokka zebra"),
            Note(id=802, title="zebra", body="zebra crossing"),
            Note(id=803, title="other", body="quokka only"),
        ]
    )
    session.flush()
    assert ids(session, Note.text_search("zebra quokka")) == [801, 802, 803]
    assert ids(session, Note.text_search("zebra quokka", mode="all")) == [801]
    assert ids(session, Note.text_search('"zebra crossing"', mode="phrase")) == [802]
    assert ids(session, Note.text_search("zebra -crossing", mode="websearch")) == [801]
    filtered = Note.text_search("zebra quokka").where(Note.id != 801)
    assert ids(session, filtered) == [802, 803]
    arm = bm25.BM25Arm().candidates(Note, "zebra quokka", where=[Note.id != 801], depth=1)
    assert [row.pk_0 for row in session.execute(arm)] == [802]
    default = session.execute(Note.text_search("zebra quokka")).all()
    tuned = session.execute(Note.text_search("zebra quokka", k1=2.0, b=0.0)).all()
    assert [score for _, score in default] != [score for _, score in tuned]


def test_reads_postings_through_their_index(session: Session) -> None:
    session.execute(text("SET LOCAL enable_seqscan = off"))
    used = indexes_used(session, Note.text_search("vacuum table", k=5))
    assert "ix_notes_bm25_postings_impact" in used


@pytest.mark.parametrize("mode", ["any", "all", "phrase", "websearch"])
def test_empty_or_stop_word_text_finds_nothing(session: Session, mode: str) -> None:
    for search in ("", "   ", "the and of", "!!!", "&|()", "'\"", "\\", "\x00", "-the"):
        assert ids(session, Note.text_search(search, mode=mode)) == [], search  # type: ignore[arg-type]


HOSTILE = st.lists(
    st.one_of(
        st.sampled_from([*list("&|!():*'\"\\;-<>@%$_ "), "--", "/*", "\x00", "<->", "<2>", "or"]),
        st.sampled_from(["vacuum", "lock", "DROP", "TABLE", "notes", "%s", "%(x)s", "$1"]),
        st.text(max_size=4),
    ),
    max_size=10,
).map("".join)


def test_hostile_text_never_errors(session: Session) -> None:
    @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(search=HOSTILE, mode=st.sampled_from(["any", "all", "phrase", "websearch"]))
    def check(search: str, mode: str) -> None:
        found = session.execute(Note.text_search(search, k=10, mode=mode)).all()  # type: ignore[arg-type]
        assert all(score > 0 for _, score in found)

    check()
    session.commit()
    assert session.scalar(select(func.count()).select_from(Note)) == 120


def test_models_without_bm25_rank_with_ts_rank(engine: Engine) -> None:
    class Plain(vecorm.Searchable, Base):
        __tablename__ = "plain_notes"
        __vecorm__ = vecorm.SearchConfig(fields=("body",), dimensions=4, index=None, bm25=None)
        id: Mapped[int] = mapped_column(primary_key=True)
        body: Mapped[str]

    assert "plain_notes_bm25_postings" not in Base.metadata.tables
    with pytest.raises(vecorm.ConfigurationError, match="bm25=None"):
        bm25.side_tables(Plain)
    statement = str(Plain.text_search("vacuum").compile())
    assert "ts_rank" in statement
    Base.metadata.remove(Plain.__table__)  # type: ignore[attr-defined]


def test_invalid_settings() -> None:
    with pytest.raises(vecorm.ConfigurationError):
        BM25(k1=-1)
    with pytest.raises(vecorm.ConfigurationError):
        BM25(b=1.5)
    with pytest.raises(vecorm.ConfigurationError):
        BM25(prune_above=0)
    with pytest.raises(vecorm.ConfigurationError):
        BM25(seed=None)  # type: ignore[arg-type]
    with pytest.raises(vecorm.ConfigurationError):
        bm25.scores(Note, "x", mode="fuzzy")  # type: ignore[arg-type]


def test_postings_are_identified_for_logical_replication(engine: Engine) -> None:
    with engine.connect() as conn:
        identity = conn.scalar(
            text("SELECT relreplident FROM pg_class WHERE oid = 'notes_bm25_postings'::regclass")
        )
        assert identity == "i"  # REPLICA IDENTITY USING INDEX: DELETEs can be published
        triggers = conn.scalars(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'notes'::regclass "
                "AND NOT tgisinternal ORDER BY tgname"
            )
        ).all()
    assert triggers == [
        "notes_bm25_delete",
        "notes_bm25_insert",
        "notes_bm25_truncate",
        "notes_bm25_update",
    ]
