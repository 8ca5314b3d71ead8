"""The embedded server: start, use, stop; and the user's own URL."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import URL, text

import vecorm
from vecorm.engine import libpq_conninfo, normalize_url


@pytest.mark.slow
def test_embedded_server_starts_with_pgvector_and_stops(tmp_path: Path) -> None:
    with vecorm.start_embedded(tmp_path / "pgdata") as server:
        engine = vecorm.create_engine(server.url)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version_num")).scalar_one()
            extension = conn.execute(
                text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar_one()
        engine.dispose()
        conninfo = libpq_conninfo(server.url)
    assert int(version) >= 180000
    assert extension.startswith("0.8")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(conninfo, connect_timeout=2)
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()  # a given directory is kept


def test_temporary_server_is_deleted_on_exit() -> None:
    with vecorm.start_embedded() as server:
        data_dir = server.data_dir
        assert data_dir.exists()
    assert not data_dir.exists()
    assert not data_dir.parent.exists()  # nor the temporary directory made for it


def test_database_uses_the_given_url(vecorm_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECORM_DATABASE_URL", vecorm_url.render_as_string(hide_password=False))
    with vecorm.database() as url:
        assert url.database == vecorm_url.database
        assert vecorm.database_url() == url


def test_normalize_url_picks_psycopg3() -> None:
    assert normalize_url("postgresql://u:p@h:5433/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+asyncpg://u@h/db").drivername == "postgresql+asyncpg"


def test_server_error_is_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(vecorm.ServerError, match="VECORM_DATABASE_URL"):
        vecorm.start_embedded(blocker / "pgdata")
    assert os.path.exists(blocker)
