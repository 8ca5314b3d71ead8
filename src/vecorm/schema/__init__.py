"""The schema layer: what a searchable model declares and how PostgreSQL stores it.

:mod:`~vecorm.schema.config` (``SearchConfig``, ``HNSW``, ``BM25`` ...), the index
declarations (:mod:`~vecorm.schema.indexes`), the column types and their binary adaptation
(:mod:`~vecorm.schema.types`, also importable as ``vecorm.types``, and
:mod:`~vecorm.schema.drivers`), the generated ``tsvector`` DDL (:mod:`~vecorm.schema.generated`),
pg_catalog's functions called qualified (:mod:`~vecorm.schema.pgcatalog`) and SQLModel
support. It imports nothing from the layers above it.
"""
