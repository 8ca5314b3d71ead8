"""``vecorm backfill --json`` and its progress lines without a bar."""

from __future__ import annotations

import json

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
        "model", "rows", "batches", "calls", "seconds", "rows_per_second", "left"
    }  # fmt: skip
    assert _embedded_rows(vecorm_url) == (40, 40)
