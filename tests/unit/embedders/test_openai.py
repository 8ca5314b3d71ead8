"""OpenAIEmbedder against a loopback OpenAI-compatible server (real client, real HTTP)."""

from __future__ import annotations

import asyncio
import logging
import pickle
from typing import Any

import numpy as np
import openai
import pytest

from vecorm.embedding.embedders.base import AsyncEmbedder
from vecorm.embedding.embedders.hashing import HashingEmbedder
from vecorm.embedding.embedders.openai import OpenAIEmbedder
from vecorm.errors import ConfigurationError, DimensionMismatch, EmbeddingError
from vecorm.testing.openai_server import OpenAIServer

API_KEY = "sk-test-Zq8vN3xKp2LmR7wY"
TEXTS = [
    "postgres vector search",
    "hybrid ranking with bm25",
    "alembic migrations for indexes",
    "sqlalchemy declarative models",
    "reciprocal rank fusion",
    "embedding providers",
    "the quick brown fox",
]


def make_embedder(server: OpenAIServer, **options: Any) -> OpenAIEmbedder:
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "base_url": server.base_url,
        "max_retries": 2,
        "timeout": 5.0,
    }
    settings.update(options)
    return OpenAIEmbedder(**settings)


def expected(texts: list[str], dimensions: int = 1536) -> np.ndarray[Any, Any]:
    return HashingEmbedder(dimensions=dimensions).embed(texts)


def test_rows_follow_input_order_although_the_server_reverses_them(
    openai_server: OpenAIServer,
) -> None:
    with make_embedder(openai_server) as embedder:
        vectors = embedder.embed(TEXTS[:4])

    assert vectors.shape == (4, 1536)
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, expected(TEXTS[:4]))
    [request] = openai_server.requests
    assert request.path == "/v1/embeddings"
    assert request.body["model"] == "text-embedding-3-small"
    assert request.body["encoding_format"] == "float"
    assert "dimensions" not in request.body


def test_batches_by_count(openai_server: OpenAIServer) -> None:
    with make_embedder(openai_server, max_batch_size=3) as embedder:
        vectors = embedder.embed(TEXTS)

    assert openai_server.batch_sizes == [3, 3, 1]
    assert [request.inputs for request in openai_server.requests] == [
        TEXTS[0:3],
        TEXTS[3:6],
        TEXTS[6:7],
    ]
    np.testing.assert_array_equal(vectors, expected(TEXTS))


def test_batches_by_token_budget(openai_server: OpenAIServer) -> None:
    # 30 ASCII characters are estimated at 10 tokens: two texts fit a 25-token budget.
    texts = [f"{index} " + "x" * 28 for index in range(5)]
    with make_embedder(openai_server, max_tokens_per_batch=25) as embedder:
        vectors = embedder.embed(texts)

    assert openai_server.batch_sizes == [2, 2, 1]
    np.testing.assert_array_equal(vectors, expected(texts))


def test_custom_token_counter_drives_the_budget(openai_server: OpenAIServer) -> None:
    with make_embedder(
        openai_server, max_tokens_per_batch=3, count_tokens=lambda text: len(text.split())
    ) as embedder:
        embedder.embed(["one two", "three", "four five", "six", "seven"])

    assert openai_server.batch_sizes == [2, 2, 1]


def test_text_over_the_input_limit_fails_before_any_request(
    openai_server: OpenAIServer,
) -> None:
    with make_embedder(openai_server) as embedder, pytest.raises(EmbeddingError) as caught:
        embedder.embed(["short", "fine", "y" * 30_000])

    assert "text 2" in str(caught.value)
    assert "8191" in str(caught.value)
    assert openai_server.requests == []


def test_truncate_embeds_the_start_that_fits_the_input_limit(
    openai_server: OpenAIServer,
) -> None:
    words = " ".join(f"word{index:05d}" for index in range(3_000))  # 29,999 characters
    with make_embedder(openai_server, truncate=True) as embedder:
        vectors = embedder.embed(["short", words])
        assert embedder.count_tokens(words) > embedder.max_input_tokens == 8191

    [request] = openai_server.requests
    sent = request.inputs[1]
    assert request.inputs[0] == "short"
    assert words.startswith(sent) and words[len(sent)] == " "  # cut between two words
    assert 8191 - 4 <= embedder.count_tokens(sent) <= 8191  # as long as the limit allows
    np.testing.assert_array_equal(vectors, expected(["short", sent]))


def test_truncate_follows_a_custom_token_counter(openai_server: OpenAIServer) -> None:
    text = " ".join(["token"] * 10_000)
    with make_embedder(
        openai_server, truncate=True, count_tokens=lambda text: len(text.split())
    ) as embedder:
        embedder.embed([text])

    [request] = openai_server.requests
    assert len(request.inputs[0].split()) == 8191


def test_empty_text_fails_before_any_request(openai_server: OpenAIServer) -> None:
    with make_embedder(openai_server) as embedder, pytest.raises(EmbeddingError, match="text 1"):
        embedder.embed(["fine", ""])

    assert openai_server.requests == []


def test_dimensions_are_sent_and_honoured(openai_server: OpenAIServer) -> None:
    with make_embedder(openai_server, model="text-embedding-3-large", dimensions=256) as embedder:
        vectors = embedder.embed(TEXTS[:2])

    assert embedder.dimensions == 256
    assert embedder.model_name == "openai:text-embedding-3-large:256"
    assert vectors.shape == (2, 256)
    np.testing.assert_array_equal(vectors, expected(TEXTS[:2], 256))
    assert openai_server.requests[0].body["dimensions"] == 256


def test_native_dimensions_per_model() -> None:
    assert OpenAIEmbedder(api_key=API_KEY).dimensions == 1536
    assert OpenAIEmbedder(api_key=API_KEY, model="text-embedding-3-large").dimensions == 3072
    assert OpenAIEmbedder(api_key=API_KEY, model="text-embedding-ada-002").dimensions == 1536
    assert OpenAIEmbedder(api_key=API_KEY).model_name == "openai:text-embedding-3-small:1536"
    assert OpenAIEmbedder(api_key=API_KEY).max_batch_size == 2048


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "text-embedding-ada-002", "dimensions": 512}, "only text-embedding-3"),
        ({"model": "text-embedding-3-small", "dimensions": 2000}, "at most 1536"),
        ({"model": "text-embedding-3-small", "dimensions": 0}, "positive integer"),
        ({"model": "my-local-model"}, "pass dimensions="),
        ({"max_batch_size": 5000}, "between 1 and 2048"),
        ({"max_tokens_per_batch": 0}, "must be positive"),
        ({"timeout": 0}, "positive number of seconds"),
    ],
)
def test_invalid_configuration_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        OpenAIEmbedder(api_key=API_KEY, **options)


def test_unknown_model_with_dimensions_is_sent_to_a_compatible_server(
    openai_server: OpenAIServer,
) -> None:
    with make_embedder(openai_server, model="nomic-embed-text", dimensions=64) as embedder:
        vectors = embedder.embed(["local model"])

    assert vectors.shape == (1, 64)
    assert openai_server.requests[0].body["dimensions"] == 64


def test_a_self_hosted_server_without_matryoshka_gets_no_dimensions() -> None:
    """vLLM / Ollama serving a model at its own width refuse ``dimensions``: the error says
    what to pass, and ``send_dimensions=False`` leaves it out (the width is still checked)."""
    refused = r"HTTP 400: the server refused dimensions=48; .* pass send_dimensions=False"
    options: dict[str, Any] = {"model": "nomic-embed-text", "dimensions": 48}
    with OpenAIServer(default_dimensions=48, matryoshka=False) as server:
        with (
            make_embedder(server, **options) as embedder,
            pytest.raises(EmbeddingError, match=refused),
        ):
            embedder.embed(["self-hosted"])
        server.reset()
        with make_embedder(server, **options, send_dimensions=False) as embedder:
            vectors = embedder.embed(["self-hosted", "model"])
            assert vectors.shape == (2, 48)
            assert "dimensions" not in server.requests[0].body
            assert embedder.model_name == "openai:nomic-embed-text:48"
        wider = {**options, "dimensions": 64, "send_dimensions": False}
        mismatch = "expects 64 values per vector, the provider returned 48"
        with (
            make_embedder(server, **wider) as embedder,
            pytest.raises(DimensionMismatch, match=mismatch),
        ):
            embedder.embed(["wrong width declared"])


def test_rate_limit_is_retried_by_the_client(openai_server: OpenAIServer) -> None:
    openai_server.fail_next(status=429, times=2)  # no Retry-After: the client's own backoff
    with make_embedder(openai_server, max_retries=2) as embedder:
        vectors = embedder.embed(TEXTS[:2])

    np.testing.assert_array_equal(vectors, expected(TEXTS[:2]))
    requests = openai_server.requests
    assert len(requests) == 3
    assert [request.headers.get("x-stainless-retry-count") for request in requests] == [
        "0",
        "1",
        "2",
    ]


def test_server_errors_after_the_last_retry_become_embedding_error(
    openai_server: OpenAIServer,
) -> None:
    openai_server.fail_next(status=500, times=3, retry_after=0.01)
    with (
        make_embedder(openai_server, max_retries=2) as embedder,
        pytest.raises(EmbeddingError) as caught,
    ):
        embedder.embed(TEXTS[:2])

    message = str(caught.value)
    assert "HTTP 500" in message
    assert "text-embedding-3-small" in message
    assert "after 2 retries" in message
    assert isinstance(caught.value.__cause__, openai.InternalServerError)
    assert len(openai_server.requests) == 3


def test_failure_in_a_later_batch_raises_and_stops(openai_server: OpenAIServer) -> None:
    openai_server.fail_on_request(2, status=400, message="'$.input' is invalid.")
    with (
        make_embedder(openai_server, max_batch_size=3) as embedder,
        pytest.raises(EmbeddingError, match=r"HTTP 400.*\$\.input' is invalid"),
    ):
        embedder.embed(TEXTS)

    assert openai_server.batch_sizes == [3, 3]  # 400 is not retried; batch 3 never sent


def test_timeout_becomes_embedding_error(openai_server: OpenAIServer) -> None:
    openai_server.delay_next(1.0)
    with (
        make_embedder(openai_server, timeout=0.2, max_retries=0) as embedder,
        pytest.raises(EmbeddingError, match="timed out") as caught,
    ):
        embedder.embed(["slow"])

    assert isinstance(caught.value.__cause__, openai.APITimeoutError)
    assert len(openai_server.requests) == 1


def test_connection_refused_becomes_embedding_error() -> None:
    with OpenAIServer() as server:
        base_url = server.base_url  # the port is free again once the server stops
    embedder = OpenAIEmbedder(api_key=API_KEY, base_url=base_url, max_retries=0, timeout=2.0)
    with embedder, pytest.raises(EmbeddingError, match="could not reach"):
        embedder.embed(["nobody listens"])


def test_wrong_width_from_the_server_is_a_dimension_mismatch(
    openai_server: OpenAIServer,
) -> None:
    openai_server.wrong_dimensions_next(8)
    with make_embedder(openai_server) as embedder, pytest.raises(DimensionMismatch) as caught:
        embedder.embed(TEXTS[:2])

    assert "1536" in str(caught.value)
    assert "8" in str(caught.value).replace("1536", "")


def test_api_key_never_shown() -> None:
    embedder = OpenAIEmbedder(api_key=API_KEY, base_url="https://user:pw@example.invalid/v1")

    assert API_KEY not in repr(embedder)
    assert API_KEY not in str(embedder)
    assert "pw@" not in repr(embedder)
    assert repr(embedder) == (
        "OpenAIEmbedder(model='text-embedding-3-small', dimensions=1536, "
        "base_url='https://example.invalid/v1')"
    )


def test_api_key_never_in_error_messages() -> None:
    with OpenAIServer(required_api_key="sk-the-right-one") as server:
        with make_embedder(server) as embedder, pytest.raises(EmbeddingError) as caught:
            embedder.embed(["hello"])
        assert "HTTP 401" in str(caught.value)
        assert "API key" in str(caught.value)
        assert API_KEY not in str(caught.value)
        assert server.requests[0].authorization_present
        assert "authorization" not in server.requests[0].headers

        # A server that echoes the key back in its error message.
        server.fail_next(status=400, message=f"Incorrect API key provided: {API_KEY}")
        with make_embedder(server) as embedder, pytest.raises(EmbeddingError) as caught:
            embedder.embed(["hello"])
        assert API_KEY not in str(caught.value)
        assert "Incorrect API key provided: ***" in str(caught.value)


def test_api_key_never_in_logs(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.fail_next(status=500, retry_after=0.01)
    with caplog.at_level(logging.DEBUG), make_embedder(openai_server) as embedder:
        embedder.embed(["logged at debug level"])

    assert "embeddings" in caplog.text  # the client did log its requests
    assert API_KEY not in caplog.text


def test_key_and_url_come_from_the_environment(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    with OpenAIEmbedder(max_retries=0) as embedder:
        vectors = embedder.embed(["from the environment"])

    assert vectors.shape == (1, 1536)
    assert openai_server.requests[0].authorization_present


def test_missing_key_is_a_configuration_error(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    embedder = OpenAIEmbedder(base_url=openai_server.base_url)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        embedder.embed(["no key"])

    assert openai_server.requests == []


def test_empty_input_makes_no_request(openai_server: OpenAIServer) -> None:
    with make_embedder(openai_server, dimensions=64) as embedder:
        vectors = embedder.embed([])

    assert vectors.shape == (0, 64)
    assert vectors.dtype == np.float32
    assert openai_server.requests == []


def test_follows_the_async_protocol() -> None:
    assert isinstance(OpenAIEmbedder(api_key=API_KEY), AsyncEmbedder)


async def test_async_embeds_in_order_and_in_batches(openai_server: OpenAIServer) -> None:
    async with make_embedder(openai_server, max_batch_size=3) as embedder:
        vectors = await embedder.aembed(TEXTS)
        again = await embedder.aembed(TEXTS[:1])

    np.testing.assert_array_equal(vectors, expected(TEXTS))
    np.testing.assert_array_equal(again, expected(TEXTS[:1]))
    assert openai_server.batch_sizes == [3, 3, 1, 1]
    assert {request.headers["x-stainless-async"] for request in openai_server.requests} != {"false"}


async def test_async_errors_and_empty_input(openai_server: OpenAIServer) -> None:
    openai_server.fail_next(status=503, times=2, retry_after=0.01)
    async with make_embedder(openai_server, max_retries=1) as embedder:
        assert (await embedder.aembed([])).shape == (0, 1536)
        with pytest.raises(EmbeddingError, match="HTTP 503"):
            await embedder.aembed(["unlucky"])

    assert len(openai_server.requests) == 2


def test_async_works_across_event_loops(openai_server: OpenAIServer) -> None:
    embedder = make_embedder(openai_server)
    first = asyncio.run(embedder.aembed(["one loop"]))
    second = asyncio.run(embedder.aembed(["another loop"]))

    np.testing.assert_array_equal(
        np.vstack([first, second]), expected(["one loop", "another loop"])
    )
    assert len(openai_server.requests) == 2


# The loopback server itself, as the official client sees it.


def test_server_answers_the_clients_default_base64_encoding(openai_server: OpenAIServer) -> None:
    texts = ["first text", "second text", "third text"]
    with openai.OpenAI(api_key=API_KEY, base_url=openai_server.base_url) as client:
        response = client.embeddings.create(
            model="text-embedding-3-small", input=texts, dimensions=32
        )

    [request] = openai_server.requests
    assert request.body["encoding_format"] == "base64"  # what openai>=1.x asks for by default
    assert [item.index for item in response.data] == [2, 1, 0]
    got = np.array([item.embedding for item in sorted(response.data, key=lambda i: i.index)])
    np.testing.assert_array_equal(got.astype(np.float32), expected(texts, 32))


def test_server_accepts_the_path_without_v1_and_hides_the_key(
    openai_server: OpenAIServer,
) -> None:
    base_url = openai_server.base_url.removesuffix("/v1")
    with openai.OpenAI(api_key=API_KEY, base_url=base_url, max_retries=0) as client:
        client.embeddings.create(model="text-embedding-ada-002", input="one")
        with pytest.raises(openai.NotFoundError):
            client.models.list()

    embeddings, models = openai_server.requests
    assert embeddings.path == "/embeddings"
    assert embeddings.batch_size == 1
    assert models.method == "GET"
    assert all(request.authorization_present for request in openai_server.requests)
    assert API_KEY not in repr(openai_server.requests)


def test_server_schedules_a_failure_for_a_later_request(openai_server: OpenAIServer) -> None:
    openai_server.fail_on_request(2, status=418)
    with openai.OpenAI(api_key=API_KEY, base_url=openai_server.base_url, max_retries=0) as client:
        client.embeddings.create(model="text-embedding-3-small", input=["a"])
        with pytest.raises(openai.APIStatusError) as caught:
            client.embeddings.create(model="text-embedding-3-small", input=["b"])
        client.embeddings.create(model="text-embedding-3-small", input=["c"])

    assert caught.value.status_code == 418
    assert len(openai_server.requests) == 3


def test_a_refused_input_is_told_from_a_failing_service(openai_server: OpenAIServer) -> None:
    """What a backfill splits (the texts were refused) and what it retries (the service)."""
    openai_server.refuse_texts_containing("forbidden")
    with make_embedder(openai_server, max_retries=0) as embedder:
        with pytest.raises(EmbeddingError, match="HTTP 400") as refused:
            embedder.embed(["fine", "a forbidden text"])
        assert refused.value.rejected_input
        with pytest.raises(EmbeddingError, match="input limit") as too_long:
            embedder.embed(["word " * 40_000])
        assert too_long.value.rejected_input
        openai_server.fail_next(429)
        with pytest.raises(EmbeddingError, match="HTTP 429") as limited:
            embedder.embed(["fine"])
        assert not limited.value.rejected_input
        openai_server.fail_next(503)
        with pytest.raises(EmbeddingError, match="HTTP 503") as down:
            embedder.embed(["fine"])
        assert not down.value.rejected_input
    copied = pickle.loads(pickle.dumps(refused.value))
    assert copied.rejected_input and str(copied) == str(refused.value)
