"""pgvector's column types, vecorm's drop-in for ``pgvector.sqlalchemy`` (implemented in
:mod:`vecorm.schema.types`; this path stays, as pgvector users import it)::

    from vecorm.types import Vector, HalfVec, SparseVec, Bit
"""

from vecorm.schema.types import *  # noqa: F403
from vecorm.schema.types import __all__ as __all__
