"""Query-time settings on Citus: carried to the workers, where the index scans run.

vecorm applies pgvector's settings with ``set_config(name, value, true)``
(:mod:`vecorm.search.settings`), which changes the coordinator's session only. On a Citus
cluster the index scans run on the workers, in connections the coordinator opens, so the
settings never reached them: measured on a three-node cluster, ``ef_search=1`` with iterative
scan off still returned 10 rows per tenant, while pgvector returns at most ``ef_search``.

Citus carries ``SET LOCAL`` commands to the workers of the transaction (now and when it
opens more connections) when ``citus.propagate_set_commands`` is ``'local'``, and only
commands it sees as statements: a ``set_config`` call is invisible to it. So on a database
with the ``citus`` extension the hook also runs one ``DO`` block per change, which switches
propagation on, runs ``SET LOCAL`` for each setting and puts the switch back::

    DO $vecorm$DECLARE p text := pg_catalog.current_setting('citus.propagate_set_commands');
    BEGIN SET LOCAL citus.propagate_set_commands = 'local'; SET LOCAL hnsw.ef_search = '200';
    PERFORM pg_catalog.set_config('citus.propagate_set_commands', p, true); END$vecorm$

(a block, because Citus forwards the text of the whole query string for each ``SET`` of a
multi-statement query, and each statement's own text inside PL/pgSQL). The previous values
go back the same way after the statement, so nothing outlives it on the workers either.
Whether a database has Citus is asked once per DBAPI connection
(:func:`vecorm.schema.cluster.is_citus`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy.engine import Connection

from vecorm.errors import ConfigurationError
from vecorm.schema.cluster import is_citus
from vecorm.schema.dbapi import execute_raw

_NAME = re.compile(r"^[a-z_]+(\.[a-z_]+)?$")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def propagation_block(values: Mapping[str, str]) -> str:
    """The ``DO`` block that ``SET LOCAL``\\ s ``values`` where Citus carries them to the
    workers (see the module docstring)::

        >>> print(propagation_block({"hnsw.ef_search": "200"}))  # doctest: +NORMALIZE_WHITESPACE
        DO $vecorm$DECLARE p text := pg_catalog.current_setting('citus.propagate_set_commands');
        BEGIN SET LOCAL citus.propagate_set_commands = 'local';
        SET LOCAL hnsw.ef_search = '200';
        PERFORM pg_catalog.set_config('citus.propagate_set_commands', p, true); END$vecorm$
    """
    sets = []
    for name, value in values.items():
        if not _NAME.match(name) or "$vecorm$" in value:
            raise ConfigurationError(f"cannot carry setting {name!r} = {value!r} to the workers")
        sets.append(f"SET LOCAL {name} = {_literal(value)};")
    return (
        "DO $vecorm$DECLARE p text := "
        "pg_catalog.current_setting('citus.propagate_set_commands');\n"
        "BEGIN SET LOCAL citus.propagate_set_commands = 'local';\n"
        + "\n".join(sets)
        + "\nPERFORM pg_catalog.set_config('citus.propagate_set_commands', p, true); END$vecorm$"
    )


def propagate(conn: Connection, values: Mapping[str, str]) -> None:
    """``SET LOCAL`` ``values`` on the Citus workers of ``conn``'s transaction, if its
    database has Citus; nothing otherwise."""
    if values and is_citus(conn):
        execute_raw(conn, propagation_block(values))
