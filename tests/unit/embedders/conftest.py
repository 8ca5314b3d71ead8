"""Fixtures for the embedder tests: a loopback OpenAI-compatible server per test, the installed
local-model backends, and SciFact texts read in place from ../shared/data/scifact."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vecorm.embedding.embedders.local import installed_backends
from vecorm.testing.openai_server import OpenAIServer

BACKENDS = installed_backends()
needs_onnx = pytest.mark.skipif(
    "onnx" not in BACKENDS, reason="needs the onnx backend: pip install 'vecorm[local]'"
)
needs_torch = pytest.mark.skipif(
    "torch" not in BACKENDS, reason="needs the torch backend: pip install 'vecorm[local-torch]'"
)
#: Each local backend as a test parameter, skipped when it is not installed.
BACKEND_PARAMS = [
    pytest.param("onnx", marks=needs_onnx, id="onnx"),
    pytest.param("torch", marks=[needs_torch, pytest.mark.slow], id="torch"),
]


def scifact_dir() -> Path:
    """Where SciFact is: $VECORM_SCIFACT_DIR, else ../shared/data/scifact beside the repo."""
    configured = os.environ.get("VECORM_SCIFACT_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "scifact"


def scifact_texts(name: str, limit: int | None = None) -> list[str]:
    """Texts of ``corpus`` (title and abstract) or ``queries``; skips the test without SciFact."""
    path = scifact_dir() / f"{name}.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"SciFact is not at {path.parent} (set VECORM_SCIFACT_DIR to its directory)")
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            texts.append(" ".join(filter(None, (record.get("title"), record["text"]))))
            if limit is not None and len(texts) == limit:
                break
    return texts


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    """A fresh OpenAI embeddings server on 127.0.0.1; stopped after the test."""
    with OpenAIServer() as server:
        yield server
