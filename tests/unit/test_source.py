from __future__ import annotations

from types import SimpleNamespace

from vecorm.embedding.source import source_text, text_digest


def test_source_text_joins_non_blank_fields_in_order() -> None:
    row = SimpleNamespace(title="Intro", body=None, note="  ", extra="PostgreSQL")
    assert source_text(row, ("title", "body", "note", "extra")) == "Intro\nPostgreSQL"


def test_source_text_is_none_when_nothing_to_embed() -> None:
    assert source_text(SimpleNamespace(title=None, body=""), ("title", "body")) is None


def test_digest_changes_with_text_only() -> None:
    assert text_digest("a") == text_digest("a")
    assert text_digest("a") != text_digest("a ")
    assert len(text_digest("é")) == 32
