"""``SearchConfig(embeddings=...)`` declarations: what each added embedding gets, and the
mistakes refused when the class is created, naming the class and the embedding."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Index, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.schema.embeddings import embedding_slot, embedding_slots


class Base(DeclarativeBase):
    pass


class Paper(vecorm.Searchable, Base):
    __tablename__ = "papers_cfg"
    __vecorm__ = vecorm.SearchConfig(
        fields=("title", "abstract"),
        dimensions=32,
        distance="inner_product",
        embeddings={
            "title_embedding": vecorm.Embedding(fields="title", index=vecorm.IVFFlat(lists=10)),
            "next_embedding": vecorm.Embedding(dimensions=3072, storage="halfvec"),
        },
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    abstract: Mapped[str] = mapped_column(Text)


def _index(name: str) -> Index:
    (found,) = [index for index in Paper.__table__.indexes if index.name == name]
    return found


def test_an_added_embedding_takes_the_model_s_settings_unless_it_sets_its_own() -> None:
    default, title, following = embedding_slots(Paper)
    assert default.attribute == "embedding" and default.config is Paper.__vecorm__
    assert title.config.fields == ("title",)
    assert title.config.dimensions == 32
    assert title.config.metric is vecorm.Distance.INNER_PRODUCT
    assert title.config.bm25 is None and not title.config.text_index
    assert following.config.fields == ("title", "abstract")
    assert following.config.dimensions == 3072
    assert (following.digest_attribute, following.model_attribute) == (
        "next_embedding_digest",
        "next_embedding_model",
    )
    assert embedding_slot(Paper, Paper.title_embedding) is title


def test_each_gets_its_index_with_its_operator_class() -> None:
    ivfflat = _index("ix_papers_cfg_title_embedding_ivfflat")
    assert ivfflat.dialect_options["postgresql"]["ops"] == {"title_embedding": "vector_ip_ops"}
    assert ivfflat.dialect_options["postgresql"]["with"] == {"lists": 10}
    # 3072 halfvec dimensions: indexed as they are stored (halfvec_ip_ops), up to 4000
    halfvec = _index("ix_papers_cfg_next_embedding_hnsw")
    assert halfvec.dialect_options["postgresql"]["ops"] == {"next_embedding": "halfvec_ip_ops"}
    assert str(Paper.__table__.c.next_embedding.type) == "HALFVEC(3072)"


def _declare(embeddings: dict[str, Any], **config: Any) -> None:
    class ScratchBase(DeclarativeBase):
        pass

    class Scratch(vecorm.Searchable, ScratchBase):
        __tablename__ = "scratch"
        __vecorm__ = vecorm.SearchConfig(
            fields=("title",), dimensions=8, embeddings=embeddings, **config
        )
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(Text)
        body: Mapped[str] = mapped_column(Text)


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ({"embedding": vecorm.Embedding()}, "attribute 'embedding' is already taken"),
        ({"title": vecorm.Embedding()}, "attribute 'title' is already taken"),
        ({"x": vecorm.Embedding(column="embedding")}, "column 'embedding' is already taken"),
        ({"_hidden": vecorm.Embedding()}, "must be a Python attribute name"),
        ({"x": vecorm.Embedding(dimensions=0)}, "embeddings\\['x'\\]: dimensions must be"),
        (
            {"x": vecorm.Embedding(dimensions=3000, index=vecorm.HNSW(precision="vector"))},
            "embeddings\\['x'\\]: pgvector cannot index vector over 2000",
        ),
        ({"x": "title"}, "must be a vecorm.Embedding"),
        ({"x": vecorm.Embedding(fields=("nope",))}, "field 'nope' is not a mapped column"),
        ({"x": vecorm.Embedding(fields=("id",))}, "field 'id' is a INTEGER column"),
        ({"x": vecorm.Embedding(column="y" * 60)}, "over 63 characters"),
    ],
)
def test_mistakes_name_the_class_and_the_embedding(
    embeddings: dict[str, Any], message: str
) -> None:
    with pytest.raises(vecorm.ConfigurationError, match=message):
        _declare(embeddings)


def test_passages_take_no_added_embeddings() -> None:
    with pytest.raises(vecorm.ConfigurationError, match="embeddings is not supported on passages"):

        class Chunk(vecorm.Passage, Base):
            __tablename__ = "chunk_cfg"
            __vecorm__ = vecorm.PassageConfig(
                parent=Paper, source=("abstract",), embeddings={"x": vecorm.Embedding()}
            )


class Brief(vecorm.Searchable, Base):
    __tablename__ = "briefs_cfg"
    __vecorm__ = vecorm.SearchConfig(
        fields=("body",),
        dimensions=8,
        embeddings={"summary_embedding": vecorm.Embedding(fields=("summary",))},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column("summary_text", Text)


def test_the_notify_trigger_watches_every_embedding_s_fields() -> None:
    from vecorm.embedding.notify import notify_trigger

    assert notify_trigger(Brief).columns == ("body", "summary_text")
