"""SearchConfig validation: mistakes are caught when the class is created, naming it."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.schema.config import Distance


class Base(DeclarativeBase):
    pass


def make_model(name: str, config: object, **columns: object) -> type:
    namespace: dict[str, object] = {
        "__tablename__": name.lower(),
        "__vecorm__": config,
        "__annotations__": {"id": Mapped[int], "body": Mapped[str]},
        "id": mapped_column(primary_key=True),
        "body": mapped_column(),
    }
    namespace.update(columns)
    return type(name, (vecorm.Searchable, Base), namespace)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(fields=()), "fields must name at least one"),
        (dict(fields=("body",), dimensions=0), "dimensions must be an integer"),
        (dict(fields=("body",), language="english'); DROP TABLE x; --"), "not a text search"),
        (dict(fields=("body",), weights={"body": "E"}), "must be one of 'A', 'B', 'C', 'D'"),
        (dict(fields=("body",), weights={"title": "A"}), "not one of fields"),
        (
            dict(fields=("body",), distance="l1", index=vecorm.IVFFlat()),
            "IVFFlat does not support L1",
        ),
        (
            dict(fields=("body",), dimensions=3072, index=vecorm.HNSW(precision="vector")),
            "cannot index vector over 2000",
        ),
        (dict(fields=("body",), embedding_column="bad name"), "not a valid identifier"),
        (
            dict(fields=("body",), dimensions=384, embedder=vecorm.HashingEmbedder(dimensions=8)),
            "returns 8 dimensions but the column has 384",
        ),
        (dict(fields=("body",), related={"body": ("name",)}), "related 'body' is also one of"),
        (dict(fields=("body",), related={"author": ()}), "related 'author' must name the text"),
        (dict(fields=("body",), related={"a b": ("name",)}), "'a b' is not a valid relationship"),
        (dict(fields=("body",), related={"author": ("x.y",)}), "attribute 'x.y' is not a valid"),
        (dict(fields=("body",), related={"author": ("n", "n")}), "repeats an attribute"),
    ],
)
def test_invalid_config_names_the_class(config: dict[str, object], message: str) -> None:
    with pytest.raises(vecorm.ConfigurationError, match=message) as info:
        make_model("Broken", vecorm.SearchConfig(**config))  # type: ignore[arg-type]
    assert str(info.value).startswith("Broken.__vecorm__:")


def test_field_that_is_not_a_column_names_the_class() -> None:
    with pytest.raises(vecorm.ConfigurationError, match="Ghost.__vecorm__: field 'title'"):
        make_model("Ghost", vecorm.SearchConfig(fields=("title",), dimensions=4))


def test_missing_config_is_a_clear_error() -> None:
    with pytest.raises(vecorm.ConfigurationError, match="Bare inherits vecorm.Searchable"):
        type(
            "Bare",
            (vecorm.Searchable, Base),
            {
                "__tablename__": "bare",
                "__annotations__": {"id": Mapped[int]},
                "id": mapped_column(primary_key=True),
            },
        )


def test_halfvec_allows_up_to_4000_dimensions() -> None:
    config = vecorm.SearchConfig(fields=("body",), dimensions=3072, storage="halfvec")
    config.validate("Large")
    assert config.opclass == "halfvec_cosine_ops"


@pytest.mark.parametrize(
    ("name", "member", "operator", "opclass"),
    [
        ("cosine", Distance.COSINE, "<=>", "vector_cosine_ops"),
        ("L2", Distance.L2, "<->", "vector_l2_ops"),
        ("ip", Distance.INNER_PRODUCT, "<#>", "vector_ip_ops"),
        ("inner_product", Distance.INNER_PRODUCT, "<#>", "vector_ip_ops"),
        ("l1", Distance.L1, "<+>", "vector_l1_ops"),
    ],
)
def test_distance_operator_and_opclass(
    name: str, member: Distance, operator: str, opclass: str
) -> None:
    assert Distance.parse(name) is member
    assert member.operator == operator
    assert member.opclass() == opclass


def test_unknown_distance() -> None:
    with pytest.raises(vecorm.ConfigurationError, match="unknown distance 'hamming'"):
        vecorm.SearchConfig(fields=("body",), distance="hamming")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: vecorm.HNSW(m=1), "m must be between 2 and 100"),
        (lambda: vecorm.HNSW(m=32, ef_construction=40), "at least 2 \\* m"),
        (lambda: vecorm.IVFFlat(lists=0), "lists must be between"),
        (lambda: vecorm.IVFFlat(lists=10, probes=11), "probes must be between 1 and lists"),
    ],
)
def test_index_parameters_are_checked(factory: object, message: str) -> None:
    with pytest.raises(vecorm.ConfigurationError, match=message):
        factory()  # type: ignore[operator]


def test_config_is_frozen() -> None:
    config = vecorm.SearchConfig(fields=("body",), weights={"body": "A"})
    with pytest.raises(AttributeError):
        config.dimensions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.weights["body"] = "B"  # type: ignore[index]


def test_non_text_field_is_refused_naming_the_class() -> None:
    with pytest.raises(vecorm.ConfigurationError, match=r"Years.__vecorm__: field 'year' is a"):
        make_model(
            "Years",
            vecorm.SearchConfig(fields=("year",), dimensions=4),
            __annotations__={"id": Mapped[int], "body": Mapped[str], "year": Mapped[int]},
            year=mapped_column(),
        )


def test_related_attributes_follow_the_fields_in_the_embedded_text() -> None:
    config = vecorm.SearchConfig(
        fields=("title", "body"), related={"author": "name", "venue": ("city", "country")}
    )
    assert config.related == {"author": ("name",), "venue": ("city", "country")}
    assert config.embedded_fields == ("title", "body", "author.name", "venue.city", "venue.country")
    assert vecorm.SearchConfig(fields=("body",)).embedded_fields == ("body",)
