"""``vecorm backfill --json`` and its progress lines without a bar."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import URL

from tests.e2e.test_cli import _create_products, _embedded_rows, invoke, models_module

__all__ = ["models_module"]  # the fixture, imported for pytest


def test_backfill_json_is_one_document_on_stdout(vecorm_url: URL, models_module: str) -> None:
    _create_products(vecorm_url, models_module, 40)
    url = vecorm_url.render_as_string(hide_password=False)
    result = invoke(
        "backfill", f"{models_module}:Product", "--database-url", url, "--no-progress", "--json"
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["rows"] == 40 and document["left"] == 0
    assert document["model"] == f"{models_module}:Product"
    assert document["seconds"] > 0 and document["rows_per_second"] > 0
    assert set(document) == {
        "model", "rows", "batches", "calls", "seconds", "rows_per_second", "left", "rejected"
    }  # fmt: skip
    assert document["rejected"] == []
    assert _embedded_rows(vecorm_url) == (40, 40)


REFUSING_EMBEDDER = """
from vecorm import EmbeddingError, HashingEmbedder


class Refusing(HashingEmbedder):
    \"\"\"Refuses any text about widget 7, as a provider refuses an input (an HTTP 400).\"\"\"

    def __init__(self) -> None:
        super().__init__(dimensions=32)

    def embed(self, texts):
        if any(text.endswith("widget number 7") for text in texts):
            raise EmbeddingError("the provider refused the input", rejected_input=True)
        return super().embed(texts)


refusing = Refusing()
"""


def test_backfill_names_the_rows_whose_text_was_refused_and_fails(
    vecorm_url: URL, models_module: str, tmp_path: Path
) -> None:
    _create_products(vecorm_url, models_module, 12)
    (tmp_path / f"{models_module}_embedder.py").write_text(REFUSING_EMBEDDER)
    url = vecorm_url.render_as_string(hide_password=False)
    result = invoke(
        "backfill",
        f"{models_module}:Product",
        "--embedder",
        f"{models_module}_embedder:refusing",
        "--database-url",
        url,
        "--no-progress",
    )
    assert result.exit_code == 1, result.output
    assert "embedded 11 rows" in result.stdout
    assert "the provider refused the text of 1 rows (8)" in result.stderr
    assert "row 8: the provider refused its text (the provider refused the input)" in (
        result.stderr
    )
    assert _embedded_rows(vecorm_url) == (11, 12)
