"""The search layer: statements that find rows, built with SQLAlchemy, executed by you.

Vector statements (:mod:`~vecorm.search.vector`) and their query-time settings
(:mod:`~vecorm.search.settings`), tsquery primitives (:mod:`~vecorm.search.tsquery`), full-text
ranking (:mod:`~vecorm.search.text`, :mod:`~vecorm.search.bm25`), fusion
(:mod:`~vecorm.search.hybrid`, the lexical-arm protocol in :mod:`~vecorm.search.arms`), EXPLAIN
helpers (:mod:`~vecorm.search.explain`) and the grants a role needs
(:mod:`~vecorm.search.grants`). It builds on :mod:`vecorm.schema` and the embedders.
"""
