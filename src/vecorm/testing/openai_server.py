"""An OpenAI-compatible embeddings server on the loopback interface, for tests.

It answers ``POST /v1/embeddings`` the way the OpenAI API does, with deterministic vectors
from :class:`~vecorm.embedding.embedders.hashing.HashingEmbedder`, records every request, and can be
told to fail, stall or misbehave on the next requests. It never touches the network::

    with OpenAIServer() as server:
        server.fail_next(status=429, times=2)
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url)
        client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(server.requests) == 3  # two rate-limited tries, then the answer

Answers list their ``data`` items in reverse order, so a client that forgets to sort by
``index`` gets the rows swapped.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import numpy as np

from vecorm.embedding.embedders.hashing import HashingEmbedder

__all__ = ["OpenAIServer", "RecordedRequest"]

_NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_EMBEDDING_PATHS = frozenset({"/v1/embeddings", "/embeddings"})
_MAX_DELAY_SECONDS = 10.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received; the Authorization value is never kept."""

    method: str
    path: str
    headers: dict[str, str]
    authorization_present: bool
    body: Any

    @property
    def inputs(self) -> list[str]:
        """The texts sent in ``input`` (a bare string counts as a list of one)."""
        if not isinstance(self.body, dict):
            return []
        value = self.body.get("input")
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [item for item in value if isinstance(item, str)]
        return []

    @property
    def batch_size(self) -> int:
        """How many texts this request asked to embed."""
        return len(self.inputs)


@dataclass(frozen=True)
class _Fault:
    """A scripted answer for one request: an error, a stall, or vectors of the wrong width."""

    status: int | None = None
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    wrong_dimensions: int | None = None


@dataclass
class _Script:
    queued: deque[_Fault] = field(default_factory=deque)
    scheduled: dict[int, _Fault] = field(default_factory=dict)


class OpenAIServer:
    """A threaded HTTP server that speaks the OpenAI embeddings API on 127.0.0.1.

    ``default_dimensions`` is the width returned for models the server does not know when
    the request names no ``dimensions``. With ``required_api_key`` set, requests without
    ``Authorization: Bearer <that key>`` get a 401 as from OpenAI. ``matryoshka=False``
    answers a ``dimensions`` for such a model with vLLM's 400, as a self-hosted server does
    for a model trained without Matryoshka representations.
    """

    def __init__(
        self,
        *,
        default_dimensions: int = 1536,
        required_api_key: str | None = None,
        matryoshka: bool = True,
    ) -> None:
        self.default_dimensions = default_dimensions
        self.matryoshka = matryoshka
        self._required_api_key = required_api_key
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._script = _Script()
        self._stopping = threading.Event()
        self._refused: tuple[str, ...] = ()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        state = f"listening on {self.base_url}" if self._httpd is not None else "stopped"
        return f"<OpenAIServer {state}>"

    # lifecycle

    def start(self) -> OpenAIServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"vecorm-openai-server-{httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and close the socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._httpd is None:
            raise RuntimeError("the OpenAI test server is not running; call start() first")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The URL to give a client as ``base_url``, e.g. ``http://127.0.0.1:8123/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # what was received

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def batch_sizes(self) -> list[int]:
        """How many texts each request carried, oldest first."""
        return [request.batch_size for request in self.requests]

    def reset(self) -> None:
        """Forget the recorded requests and any faults not yet used."""
        with self._lock:
            self._requests.clear()
            self._script = _Script()

    # fault injection

    def fail_next(
        self,
        status: int = 500,
        *,
        times: int = 1,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``times`` requests with HTTP ``status`` and an OpenAI error body.

        No ``Retry-After`` header is sent unless ``retry_after`` (seconds) is given, so the
        client falls back to its own exponential backoff (0.5 s, 1 s, 2 s ...).
        """
        self._queue(_Fault(status=status, message=message, retry_after=retry_after), times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Hold the next ``times`` answers for ``seconds`` (to make a client time out)."""
        if not 0 < seconds <= _MAX_DELAY_SECONDS:
            raise ValueError(f"delay must be in (0, {_MAX_DELAY_SECONDS}] seconds, got {seconds}")
        self._queue(_Fault(delay=seconds), times)

    def wrong_dimensions_next(self, dimensions: int, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with vectors of ``dimensions`` values."""
        self._queue(_Fault(wrong_dimensions=dimensions), times)

    def fail_on_request(self, k: int, status: int = 500, *, message: str | None = None) -> None:
        """Fail the ``k``-th request from now (1 is the next one) with HTTP ``status``."""
        if k < 1:
            raise ValueError(f"k counts requests from now and starts at 1, got {k}")
        with self._lock:
            position = len(self._requests) + k - 1
            self._script.scheduled[position] = _Fault(status=status, message=message)

    def refuse_texts_containing(self, *markers: str) -> None:
        """From now on, answer any request with a text containing one of ``markers`` with
        HTTP 400, as OpenAI answers an input it will not embed (a content filter, a text over
        the model's limit); ``refuse_texts_containing()`` stops it."""
        with self._lock:
            self._refused = markers

    def _queue(self, fault: _Fault, times: int) -> None:
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._script.queued.extend([fault] * times)

    # called from handler threads

    def _record(self, request: RecordedRequest) -> _Fault | None:
        with self._lock:
            position = len(self._requests)
            self._requests.append(request)
            if position in self._script.scheduled:
                return self._script.scheduled.pop(position)
            if self._script.queued:
                return self._script.queued.popleft()
            return None

    def _answer(
        self, request: RecordedRequest, fault: _Fault | None, bearer: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        """Status, JSON body and extra headers for one recorded request."""
        if request.path.split("?", 1)[0] not in _EMBEDDING_PATHS or request.method != "POST":
            return _error(
                404,
                f"Unknown request URL: {request.method} {request.path}.",
                "invalid_request_error",
            )
        if fault is not None and fault.delay and self._stopping.wait(fault.delay):
            return _error(503, "The test server is shutting down.", "server_error")
        if fault is not None and fault.status is not None:
            return _fault_error(fault)
        if self._required_api_key is not None and bearer != self._required_api_key:
            return _error(
                401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            )
        return self._embeddings(request, fault)

    def _embeddings(
        self, request: RecordedRequest, fault: _Fault | None
    ) -> tuple[int, Any, dict[str, str]]:
        body = request.body
        if not isinstance(body, dict):
            return _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        model = body.get("model")
        texts = body.get("input")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", "invalid_request_error")
        if isinstance(texts, str):
            texts = [texts]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(text, str) and text for text in texts)
        ):
            return _error(
                400,
                "'$.input' is invalid. Please check the API reference.",
                "invalid_request_error",
            )
        for index, text in enumerate(texts):
            if any(marker in text for marker in self._refused):
                return _error(
                    400,
                    f"'$.input[{index}]' was refused: the text cannot be embedded.",
                    "invalid_request_error",
                )
        requested = body.get("dimensions")
        if requested is not None and model not in _NATIVE_DIMENSIONS and not self.matryoshka:
            # vLLM's answer for a model without Matryoshka training (Ollama's is alike).
            return _error(
                400,
                f'Model "{model}" does not support matryoshka representation, changing '
                "output dimensions will lead to poor results.",
                "BadRequestError",
            )
        if requested is not None:
            if not model.startswith("text-embedding-3") and model in _NATIVE_DIMENSIONS:
                return _error(
                    400,
                    "This model does not support specifying dimensions.",
                    "invalid_request_error",
                )
            if not isinstance(requested, int) or requested < 1:
                return _error(
                    400, f"Invalid value for 'dimensions' = {requested}.", "invalid_request_error"
                )
        width = requested or _NATIVE_DIMENSIONS.get(model, self.default_dimensions)
        if fault is not None and fault.wrong_dimensions is not None:
            width = fault.wrong_dimensions
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            return _error(
                400, f"Invalid value for 'encoding_format' = {encoding}.", "invalid_request_error"
            )
        vectors = HashingEmbedder(dimensions=width).embed(texts)
        items = [
            {"object": "embedding", "index": index, "embedding": _encode(vector, encoding)}
            for index, vector in enumerate(vectors)
        ]
        items.reverse()  # OpenAI does not promise order; clients must sort by index
        tokens = sum(max(1, len(text.split())) for text in texts)
        return (
            200,
            {
                "object": "list",
                "data": items,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            {},
        )


def _encode(vector: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(value) for value in vector]


def _error(
    status: int, message: str, kind: str, code: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, {}


def _fault_error(fault: _Fault) -> tuple[int, Any, dict[str, str]]:
    status = fault.status or 500
    if status == 429:
        default, kind, code = "Rate limit reached for requests.", "requests", "rate_limit_exceeded"
    elif status >= 500:
        default, kind, code = (
            "The server had an error while processing your request.",
            "server_error",
            None,
        )
    else:
        default, kind, code = f"Scripted failure with HTTP {status}.", "invalid_request_error", None
    status, body, headers = _error(status, fault.message or default, kind, code)
    if fault.retry_after is not None:
        headers["retry-after-ms"] = str(int(fault.retry_after * 1000))
    return status, body, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: OpenAIServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is part of the tests, not a server failure.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the server records requests instead

    def _handle(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        authorization = self.headers.get("Authorization")
        headers = {name.lower(): value for name, value in self.headers.items()}
        headers.pop("authorization", None)
        recorded = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=headers,
            authorization_present=authorization is not None,
            body=body,
        )
        fault = owner._record(recorded)
        bearer = authorization.removeprefix("Bearer ").strip() if authorization else None
        try:
            status, payload, extra_headers = owner._answer(recorded, fault, bearer)
        except Exception as exc:  # a bug here must reach the test as a 500, not a hang-up
            status, payload, extra_headers = _error(500, f"test server error: {exc!r}", "bug")
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_test_{id(recorded):x}")
            for name, value in extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout test); nothing left to tell it
