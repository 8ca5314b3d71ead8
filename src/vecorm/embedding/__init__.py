"""The embedding layer: vectors for the rows' text.

Providers and their name registry (:mod:`~vecorm.embedding.embedders`), the session hooks that
embed on flush (:mod:`~vecorm.embedding.events`), backfill, re-embedding on a model change
(:mod:`~vecorm.embedding.reembed`), adoption of existing vectors and the text each row embeds
(:mod:`~vecorm.embedding.source`). It builds on :mod:`vecorm.schema` only.
"""
