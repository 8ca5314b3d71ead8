"""SQLModel table models with :class:`vecorm.Searchable`.

Put the mixin first; everything else is what SQLModel users already write::

    from sqlmodel import Field, SQLModel
    import vecorm

    class Document(vecorm.Searchable, SQLModel, table=True):
        __vecorm__ = vecorm.SearchConfig(fields=("title", "content"), dimensions=384)

        id: int | None = Field(default=None, primary_key=True)
        title: str
        content: str

The mixin's columns (``embedding``, ``search_vector``, ``embedding_digest``,
``embedding_model``) are SQLAlchemy attributes, not pydantic fields: they stay out of
``model_dump()`` and FastAPI responses (no 1536 floats in your JSON), and pydantic would refuse to
set them. :func:`prepare_class` (called by the mixin for SQLModel classes) routes their assignment
to SQLAlchemy and accepts them as constructor keywords, so ``Document(title=..., embedding=v)``,
``doc.embedding = v`` and the flush hook's assignments work as on a declarative model.

vecorm's column types work in SQLModel fields through ``sa_type``::

    embedding: list[float] | None = Field(default=None, sa_type=vecorm.schema.types.Vector(3))
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm.attributes import set_attribute

#: Attributes the mixin adds; SQLAlchemy owns them, pydantic does not know them.
MIXIN_ATTRIBUTES = frozenset({"embedding", "search_vector", "embedding_digest", "embedding_model"})


def is_sqlmodel_class(cls: type[Any]) -> bool:
    """Whether ``cls`` is a SQLModel class (without importing sqlmodel if it is not loaded)."""
    module = sys.modules.get("sqlmodel")
    base = getattr(module, "SQLModel", None)
    return isinstance(base, type) and issubclass(cls, base)


def prepare_class(cls: type[Any]) -> None:
    """Let a searchable SQLModel class take the mixin's attributes; no-op for other classes."""
    if not is_sqlmodel_class(cls) or "__vecorm_sqlmodel__" in cls.__dict__:
        return
    cls.__vecorm_sqlmodel__ = True
    cls.__setattr__ = _setattr_wrapper(cls)  # type: ignore[assignment]
    cls.__init__ = _init_wrapper(cls)


def _setattr_wrapper(cls: type[Any]) -> Callable[[Any, str, Any], None]:
    parent_setattr = super(cls, cls).__setattr__

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if name in MIXIN_ATTRIBUTES:
            set_attribute(self, name, value)  # fires vecorm's validator like any mapped attribute
        else:
            parent_setattr(self, name, value)

    return __setattr__


def _init_wrapper(cls: type[Any]) -> Callable[..., None]:
    parent_init = super(cls, cls).__init__

    def __init__(self: Any, **data: Any) -> None:
        mixin_values = {name: data.pop(name) for name in MIXIN_ATTRIBUTES & data.keys()}
        parent_init(self, **data)
        for name, value in mixin_values.items():
            set_attribute(self, name, value)

    # pydantic checks this flag to decide whether validation may bypass __init__.
    __init__.__pydantic_base_init__ = getattr(parent_init, "__pydantic_base_init__", False)  # type: ignore[attr-defined]
    return __init__
