"""A project on stock ``pgvector.sqlalchemy`` types adds ``import vecorm.alembic``: its
revisions keep naming pgvector's classes.

Reflection returns vecorm's types once vecorm is imported, so an ``alter_column`` that only
changes ``nullable`` would otherwise say ``existing_type=vecorm.types.Vector(dim=3)`` and
import ``vecorm.types`` in a project whose models never do.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.alembic.conftest import Project, body, undefined_names

MODELS = """
    from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        embedding = mapped_column(VECTOR(3), nullable={nullable})
        half = mapped_column(HALFVEC(4), nullable={nullable})
        bits = mapped_column(BIT(8), nullable={nullable})
"""


def test_existing_type_is_rendered_in_the_models_pgvector_classes(
    project_factory: Callable[..., Project],
) -> None:
    project = project_factory()
    project.set_models(MODELS.format(nullable=True))
    project.autogenerate("items")
    project.upgrade()

    project.set_models(MODELS.format(nullable=False))
    revision = project.autogenerate("not null")
    source = revision.read_text()
    assert undefined_names(revision) == ""
    assert "vecorm.types" not in source
    upgrade = body(revision, "upgrade")
    assert "existing_type=pgvector.sqlalchemy.vector.VECTOR(dim=3)" in upgrade
    assert "existing_type=pgvector.sqlalchemy.halfvec.HALFVEC(dim=4)" in upgrade
    assert "existing_type=pgvector.sqlalchemy.bit.BIT(length=8)" in upgrade
    project.upgrade()
    project.downgrade("-1")
    project.upgrade()
    settled = project.autogenerate("nothing to do")
    assert body(settled, "upgrade") == "pass" and body(settled, "downgrade") == "pass"
