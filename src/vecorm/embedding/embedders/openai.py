"""Embeddings from the OpenAI API (or any server that speaks it), on the official client.

Texts are split into requests that respect the API's limits (2048 inputs and 300,000 tokens
per request, 8191 tokens per input), sent in order, and the answers are put back in the
order given. Rate limits, server errors and timeouts are retried by the ``openai`` client
itself, with exponential backoff; what still fails becomes :class:`~vecorm.errors.EmbeddingError`::

    embedder = OpenAIEmbedder(model="text-embedding-3-small", dimensions=512)
    vectors = embedder.embed(["postgres vector search", "hybrid ranking"])
    vectors.shape  # (2, 512)

The key comes from ``api_key=`` or the ``OPENAI_API_KEY`` environment variable, and the
endpoint from ``base_url=`` or ``OPENAI_BASE_URL``. The key never appears in ``repr()`` or
in an error message.

Token counts are estimated (3 characters per token, one per non-ASCII character), which
overestimates English text: requests stay under the API's budget at the cost of a few more
of them. tiktoken is not used by default because it downloads its vocabulary on first use;
pass ``count_tokens=`` to count exactly, e.g. with a tiktoken encoding you have cached.

A text over the 8191-token input limit raises :class:`~vecorm.errors.EmbeddingError` (split
long documents into passages: :class:`vecorm.PassageConfig`); ``truncate=True`` embeds the
longest start of it that fits instead, cut at a space when one is near, so the end of a
long text is silently left out of its vector::

    OpenAIEmbedder(truncate=True).embed([thirty_thousand_characters])   # its first ~24k
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import threading
from collections.abc import Callable, Sequence
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from vecorm.embedding.embedders.base import EmbeddingMatrix, check_embeddings
from vecorm.errors import ConfigurationError, DimensionMismatch, EmbeddingError

if TYPE_CHECKING:
    import openai

__all__ = ["OpenAIEmbedder", "estimate_tokens"]

NATIVE_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
"""Width of each known model's vectors when no ``dimensions`` is asked for."""

MAX_INPUT_TOKENS = 8191
API_MAX_BATCH_SIZE = 2048
API_MAX_TOKENS_PER_REQUEST = 300_000

_SECRET_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{4,})")


def estimate_tokens(text: str) -> int:
    """A deliberately high guess of ``text``'s token count, with no vocabulary to load.

    English averages about 4 characters per token; counting 3 leaves headroom, and each
    non-ASCII character (CJK, emoji, accents) is counted as a token of its own.
    """
    non_ascii = sum(1 for character in text if ord(character) > 127)
    ascii_characters = len(text) - non_ascii
    return -(-ascii_characters // 3) + non_ascii


def _load_openai() -> ModuleType:
    try:
        import openai
    except ImportError as exc:
        raise ConfigurationError(
            "OpenAIEmbedder needs the openai package: pip install 'vecorm[openai]'"
        ) from exc
    return openai


class OpenAIEmbedder:
    """Embed texts with an OpenAI embedding model.

    ``dimensions`` shortens text-embedding-3 vectors on the server (Matryoshka
    truncation); leave it ``None`` for the model's native width (1536 for
    text-embedding-3-small and ada-002, 3072 for text-embedding-3-large). A model vecorm
    does not know (on an OpenAI-compatible server: Ollama, vLLM, LiteLLM, an Azure
    deployment) needs ``dimensions``, which is then sent to the server as well; pass
    ``send_dimensions=False`` for a server that serves the model at that width but refuses
    the parameter (vLLM and Ollama do for models without Matryoshka training)::

        OpenAIEmbedder(model="nomic-embed-text", dimensions=768, send_dimensions=False,
                       base_url="http://localhost:11434/v1", api_key="ollama")

    ``max_retries`` and ``timeout`` (seconds per request) configure the openai client,
    which retries HTTP 408/409/429/5xx, timeouts and connection errors with backoff.
    ``truncate=True`` embeds the start of a text over the 8191-token input limit (by
    ``count_tokens``) instead of raising.

        embedder = OpenAIEmbedder(dimensions=256, max_batch_size=512)
        embedder.model_name  # 'openai:text-embedding-3-small:256'
    """

    def __init__(
        self,
        *,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        max_batch_size: int = API_MAX_BATCH_SIZE,
        max_tokens_per_batch: int = API_MAX_TOKENS_PER_REQUEST,
        max_retries: int = 5,
        timeout: float = 60.0,
        count_tokens: Callable[[str], int] | None = None,
        send_dimensions: bool = True,
        truncate: bool = False,
    ) -> None:
        self._openai = _load_openai()
        if not model:
            raise ConfigurationError(
                "OpenAIEmbedder needs a model name, e.g. 'text-embedding-3-small'"
            )
        self._model = model
        self._requested_dimensions = dimensions if send_dimensions else None
        self._dimensions = _resolve_dimensions(model, dimensions)
        if not 1 <= max_batch_size <= API_MAX_BATCH_SIZE:
            raise ConfigurationError(
                f"max_batch_size must be between 1 and {API_MAX_BATCH_SIZE} "
                f"(the API's limit per request), got {max_batch_size}"
            )
        if max_tokens_per_batch < 1:
            raise ConfigurationError(
                f"max_tokens_per_batch must be positive, got {max_tokens_per_batch}"
            )
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be 0 or more, got {max_retries}")
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout}")
        self._api_key = api_key
        self._base_url = base_url
        self._max_batch_size = max_batch_size
        self._max_tokens_per_batch = max_tokens_per_batch
        self._max_retries = max_retries
        self._timeout = float(timeout)
        self._count_tokens = count_tokens or estimate_tokens
        self._truncate = bool(truncate)
        self._client_lock = threading.Lock()
        self._client: openai.OpenAI | None = None
        self._async_client: openai.AsyncOpenAI | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None

    # the Embedder protocol

    @property
    def dimensions(self) -> int:
        """Length of every vector returned."""
        return self._dimensions

    @property
    def model_name(self) -> str:
        """``openai:<model>:<dimensions>``; changes whenever the vectors would."""
        return f"openai:{self._model}:{self._dimensions}"

    @property
    def max_batch_size(self) -> int:
        """Most texts sent in one request."""
        return self._max_batch_size

    @property
    def model(self) -> str:
        """The OpenAI model id sent with each request."""
        return self._model

    @property
    def max_input_tokens(self) -> int:
        """Most tokens one text may hold (the API refuses longer input)."""
        return MAX_INPUT_TOKENS

    def count_tokens(self, text: str) -> int:
        """``text``'s token count as this provider counts it against its limits (the
        estimate, or ``count_tokens=``); ``chunk_tokens(count_tokens=embedder.count_tokens)``."""
        return self._count_tokens(text)

    def __repr__(self) -> str:
        base_url = f", base_url={_without_userinfo(self._base_url)!r}" if self._base_url else ""
        return f"OpenAIEmbedder(model={self._model!r}, dimensions={self._dimensions}{base_url})"

    def embed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Return one row per text, in the order given; no request for an empty list."""
        batches = self._plan(texts)
        if not batches:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        client = self._sync_client()
        rows: list[EmbeddingMatrix] = []
        for batch in batches:
            try:
                response = client.embeddings.create(**self._request(batch))
            except self._openai.OpenAIError as exc:
                raise self._translate(exc) from exc
            rows.append(self._parse(batch, response))
        return check_embeddings(self, texts, np.concatenate(rows))

    async def aembed(self, texts: Sequence[str]) -> EmbeddingMatrix:
        """Same as :meth:`embed`, on ``AsyncOpenAI``, without blocking the event loop."""
        batches = self._plan(texts)
        if not batches:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        client = self._async_client_for_loop()
        rows: list[EmbeddingMatrix] = []
        for batch in batches:
            try:
                response = await client.embeddings.create(**self._request(batch))
            except self._openai.OpenAIError as exc:
                raise self._translate(exc) from exc
            rows.append(self._parse(batch, response))
        return check_embeddings(self, texts, np.concatenate(rows))

    # clients

    def close(self) -> None:
        """Close the synchronous client's connections (the async one needs :meth:`aclose`)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close both clients' connections."""
        self.close()
        with self._client_lock:
            client, self._async_client, self._async_loop = self._async_client, None, None
        if client is not None:
            await client.close()

    def __enter__(self) -> OpenAIEmbedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> OpenAIEmbedder:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _client_options(self) -> dict[str, Any]:
        return {
            "api_key": self._api_key,
            "base_url": self._base_url,
            "max_retries": self._max_retries,
            "timeout": self._timeout,
        }

    def _sync_client(self) -> openai.OpenAI:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = self._openai.OpenAI(**self._client_options())
                except self._openai.OpenAIError as exc:
                    raise self._configuration_error(exc) from exc
            return self._client

    def _async_client_for_loop(self) -> openai.AsyncOpenAI:
        # An httpx async client's connections belong to the loop that opened them.
        loop = asyncio.get_running_loop()
        with self._client_lock:
            if self._async_client is None or self._async_loop is not loop:
                try:
                    self._async_client = self._openai.AsyncOpenAI(**self._client_options())
                except self._openai.OpenAIError as exc:
                    raise self._configuration_error(exc) from exc
                self._async_loop = loop
            return self._async_client

    def _configuration_error(self, exc: Exception) -> ConfigurationError:
        if self._api_key is None and not os.environ.get("OPENAI_API_KEY"):
            return ConfigurationError(
                "no OpenAI API key: pass api_key= to OpenAIEmbedder or set OPENAI_API_KEY"
            )
        return ConfigurationError(f"cannot create the OpenAI client: {self._redact(str(exc))}")

    # requests and answers

    def _plan(self, texts: Sequence[str]) -> list[list[str]]:
        """Check every text, then group them under the count and token limits, in order."""
        if isinstance(texts, str):
            raise EmbeddingError("embed() takes a sequence of texts, not a single string")
        batches: list[list[str]] = []
        batch: list[str] = []
        batch_tokens = 0
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingError(
                    f"text {index} is a {type(text).__name__}, not a string; "
                    "OpenAIEmbedder only embeds str"
                )
            if not text:
                raise EmbeddingError(
                    f"text {index} is empty, and the OpenAI API rejects empty input; "
                    "skip empty texts or give them placeholder content",
                    rejected_input=True,
                )
            tokens = self._count_tokens(text)
            if tokens > MAX_INPUT_TOKENS and self._truncate:
                text = self._truncated(text)
                tokens = self._count_tokens(text)
            if tokens > MAX_INPUT_TOKENS:
                raise EmbeddingError(
                    f"text {index} is about {tokens} tokens ({len(text)} characters), over the "
                    f"{MAX_INPUT_TOKENS}-token input limit of {self._model}; split it into "
                    "smaller passages (vecorm.PassageConfig), pass truncate=True to embed its "
                    "start, or count_tokens= to count exactly",
                    rejected_input=True,
                )
            if batch and (
                len(batch) >= self._max_batch_size
                or batch_tokens + tokens > self._max_tokens_per_batch
            ):
                batches.append(batch)
                batch, batch_tokens = [], 0
            batch.append(text)
            batch_tokens += tokens
        if batch:
            batches.append(batch)
        return batches

    def _truncated(self, text: str) -> str:
        """The longest start of ``text`` within the input limit, cut at a space when one
        lies in its last tenth."""
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if self._count_tokens(text[:middle]) <= MAX_INPUT_TOKENS:
                low = middle
            else:
                high = middle - 1
        space = max(text.rfind(" ", 0, low + 1), text.rfind("\n", 0, low + 1))
        return text[:space] if space > low * 9 // 10 else text[:low]

    def _request(self, batch: list[str]) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self._model,
            "input": batch,
            "encoding_format": "float",
        }
        if self._requested_dimensions is not None:
            request["dimensions"] = self._requested_dimensions
        return request

    def _parse(self, batch: list[str], response: Any) -> EmbeddingMatrix:
        """One row per text of ``batch``, ordered by the ``index`` the API gave each item."""
        items = sorted(response.data, key=lambda item: item.index)
        if [item.index for item in items] != list(range(len(batch))):
            raise EmbeddingError(
                f"{self._model} answered {len(items)} embeddings for {len(batch)} texts "
                f"(indexes {[item.index for item in items][:10]}...)"
            )
        vectors = [_as_floats(item.embedding) for item in items]
        for vector in vectors:
            if vector.shape[0] != self._dimensions:
                raise DimensionMismatch(
                    f"{self.model_name} expects {self._dimensions} values per vector, "
                    f"the provider returned {vector.shape[0]}; check the model and "
                    "dimensions= against what the server serves"
                )
        return check_embeddings(self, batch, np.stack(vectors))

    def _translate(self, exc: Exception) -> EmbeddingError:
        """A vecorm error for what the openai client raised once its retries ran out."""
        api = self._openai
        where = f"model {self._model!r}"
        tries = f"after {self._max_retries} {'retry' if self._max_retries == 1 else 'retries'}"
        rejected = False
        if isinstance(exc, api.APITimeoutError):
            message = (
                f"OpenAI embeddings request for {where} timed out ({self._timeout:g} s per try, "
                f"{tries}); raise timeout= or send smaller batches"
            )
        elif isinstance(exc, api.APIConnectionError):
            message = (
                f"could not reach the OpenAI API for {where} {tries}: {exc.message} "
                "(check base_url / OPENAI_BASE_URL and the network)"
            )
        elif isinstance(exc, api.APIStatusError):
            status = exc.status_code
            rejected = status in (400, 413, 422)  # the texts, not the service
            detail = _error_detail(exc)
            if status == 401:
                advice = "check the API key (api_key= or OPENAI_API_KEY)"
            elif status == 403:
                advice = "the key's project has no access to this model"
            elif status == 404:
                advice = "check the model name and base_url"
            elif status == 429:
                advice = f"rate limit or quota reached {tries}; raise max_retries or slow down"
            elif status >= 500:
                advice = f"the server kept failing {tries}; try again later"
            elif (
                status == 400
                and self._requested_dimensions is not None
                and "dimension" in (detail or "").lower()
            ):
                rejected = False  # every text would fail alike
                advice = (
                    f"the server refused dimensions={self._requested_dimensions}; if it serves "
                    "the model at that width, pass send_dimensions=False"
                )
            else:
                advice = "the request was rejected"
            message = f"OpenAI embeddings request for {where} failed with HTTP {status}: {advice}"
            if detail:
                message += f" ({detail})"
        else:
            message = f"OpenAI embeddings request for {where} failed: {exc}"
        return EmbeddingError(self._redact(message), rejected_input=rejected)

    def _redact(self, message: str) -> str:
        for secret in (self._api_key, os.environ.get("OPENAI_API_KEY")):
            if secret:
                message = message.replace(secret, "***")
        return _SECRET_LIKE.sub("sk-***", message)


def _resolve_dimensions(model: str, dimensions: int | None) -> int:
    native = NATIVE_DIMENSIONS.get(model)
    if dimensions is None:
        if native is None:
            raise ConfigurationError(
                f"vecorm does not know the width of {model!r}; pass dimensions= "
                f"(known models: {', '.join(sorted(NATIVE_DIMENSIONS))})"
            )
        return native
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
        raise ConfigurationError(f"dimensions must be a positive integer, got {dimensions!r}")
    if native is not None and not model.startswith("text-embedding-3"):
        raise ConfigurationError(
            f"{model} does not support dimensions= (only text-embedding-3 models do); "
            f"leave it out to get {native} values per vector"
        )
    if native is not None and dimensions > native:
        raise ConfigurationError(
            f"{model} returns at most {native} values per vector, dimensions={dimensions} asked"
        )
    return dimensions


def _as_floats(embedding: object) -> np.ndarray[Any, np.dtype[np.float32]]:
    # A compatible server may ignore encoding_format="float" and send base64 anyway.
    if isinstance(embedding, str):
        try:
            return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
        except ValueError as exc:
            raise EmbeddingError("the provider returned an embedding that is not base64") from exc
    try:
        return np.asarray(embedding, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError("the provider returned an embedding that is not numeric") from exc


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    return ""


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
