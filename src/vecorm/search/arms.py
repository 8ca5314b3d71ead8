"""The lexical arm of hybrid search, as a protocol: what :class:`~vecorm.search.bm25.BM25Arm`
and :class:`~vecorm.search.text.TsRankArm` provide, and what a user's own arm must.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import Select
from sqlalchemy.sql.elements import ColumnElement


class LexicalArm(Protocol):
    """Builds the lexical candidates: ``pk_0 .. pk_n`` and ``score`` (higher is better).

    The statement applies ``where``, keeps the ``depth`` best rows and orders them best first.
    An arm may also define ``scores_of(model, text, *, keys)``: ``pk_0 .., score`` of the rows
    of the ``keys`` select that match (:class:`~vecorm.search.bm25.BM25Arm` and
    :class:`~vecorm.search.text.TsRankArm` do); without it a row that only the semantic arm
    found gets the lexical score 0. A ``scores_of`` that also takes ``where`` is given the
    search's filters (BM25Arm's statistics per distribution value depend on them).
    """

    def candidates(
        self, model: Any, text: str, *, where: Sequence[ColumnElement[bool]], depth: int
    ) -> Select[Any]: ...
