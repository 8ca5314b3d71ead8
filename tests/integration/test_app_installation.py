"""vecorm.ext.app.AppInstallation: what the Flask and FastAPI integrations install, undone."""

from __future__ import annotations

import sqlalchemy
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

import vecorm
from vecorm.ext.app import AppInstallation, engines_of


def test_engines_of_a_factory_are_its_bind_and_binds(
    vecorm_engine: Engine, vecorm_async_engine: AsyncEngine, vecorm_url: URL
) -> None:
    other = sqlalchemy.create_engine(vecorm_url)
    try:
        maker = sessionmaker(vecorm_engine, binds={Session: other})
        assert engines_of(maker) == (vecorm_engine, other)
        assert engines_of(async_sessionmaker(vecorm_async_engine)) == (
            vecorm_async_engine.sync_engine,
        )
        assert engines_of(Session(other)) == (other,)
        assert engines_of(sessionmaker()) == ()
    finally:
        other.dispose()


def test_start_covers_the_engines_and_stop_puts_back_what_it_found(
    vecorm_engine: Engine, vecorm_url: URL
) -> None:
    opted_out = sqlalchemy.create_engine(vecorm_url)
    try:
        vecorm.uninstall_search_settings(opted_out)
        maker = sessionmaker(vecorm_engine)
        embedder = vecorm.HashingEmbedder(8)
        installation = AppInstallation.start(maker, embedder=embedder, engines=[opted_out])
        assert installation.engines == (vecorm_engine, opted_out)
        assert installation.reopened == (opted_out,)
        assert vecorm.search_settings_installed(opted_out)
        with maker() as session:
            assert vecorm.installed_embedder(session) is embedder
        installation.stop()
        assert not vecorm.is_installed(maker)
        assert not vecorm.search_settings_installed(opted_out)  # opted out, as it was
        assert vecorm.search_settings_installed(vecorm_engine)  # never opted out: left on
        installation.stop()  # again: nothing to do
    finally:
        opted_out.dispose()


def test_a_replaced_installation_leaves_the_newer_one_alone(vecorm_engine: Engine) -> None:
    maker = sessionmaker(vecorm_engine)
    first = AppInstallation.start(maker, embedder=vecorm.HashingEmbedder(8))
    second = AppInstallation.start(maker, embedder=vecorm.HashingEmbedder(8))
    assert not first.current and second.current
    first.stop()
    with maker() as session:
        assert vecorm.installed_embedder(session) is second.embedder
    second.stop()
    assert not vecorm.is_installed(maker)
