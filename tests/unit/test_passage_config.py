"""PassageConfig: a SearchConfig of one field, ``text``, with a parent, a source and a chunker."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import vecorm
from vecorm.errors import ConfigurationError
from vecorm.schema.config import SearchConfig
from vecorm.schema.passages import passage_config, passage_models


class Base(DeclarativeBase):
    pass


class Doc(Base):
    __tablename__ = "docs"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]


def test_a_passage_config_is_a_search_config_of_the_passage_text() -> None:
    config = vecorm.PassageConfig(parent=Doc, source="body", dimensions=8)
    assert isinstance(config, SearchConfig)
    assert config.fields == ("text",)
    assert config.source == ("body",)
    assert config.chunker == vecorm.chunk_characters(2000, 200)
    config.validate("DocPassage")
    with pytest.raises(FrozenInstanceError):
        config.parent = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        vecorm.PassageConfig(fields=("body",), parent=Doc, source="body")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"parent": None, "source": ("body",)}, "parent must be the mapped class"),
        ({"parent": Doc, "source": ()}, "source must name the text attributes of Doc"),
        ({"parent": Doc, "source": ("body; --",)}, "source 'body; --' is not a valid"),
        ({"parent": Doc, "source": ("body",), "chunker": 500}, "chunker must be a function"),
        ({"parent": Doc, "source": ("body",), "dimensions": 0}, "dimensions must be"),
        (
            {"parent": Doc, "source": ("body",), "related": {"author": ("name",)}},
            "related is not supported on passages",
        ),
    ],
)
def test_mistakes_name_the_model(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"DocPassage.__vecorm__: {message}"):
        vecorm.PassageConfig(**options).validate("DocPassage")  # type: ignore[arg-type]


def test_a_passage_model_is_found_from_its_parent_and_subclasses() -> None:
    class Parts(vecorm.Passage, Base):
        __tablename__ = "doc_parts"
        __vecorm__ = vecorm.PassageConfig(parent=Doc, source=("body",), dimensions=8)

    class Special(Doc):  # single-table subclass: its rows have the same passages
        pass

    assert passage_models(Doc) == [Parts]
    assert passage_models(Special) == [Parts]
    assert passage_config(Parts).parent is Doc
    with pytest.raises(ConfigurationError, match="Doc is not a passage model"):
        passage_config(Doc)
