"""A TCP proxy on loopback that delays every message by a fixed time in each direction, as a
network between an application and its database does: a round trip costs twice the delay.

Messages sent back to back (a pipeline) are each delayed, not queued behind one another, so
a client that waits for each answer pays the delay per statement and one that pipelines
pays it once::

    with LatencyProxy("/tmp/pg/.s.PGSQL.5432", delay_ms=0.5) as port:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from types import TracebackType


class LatencyProxy:
    """Forwards 127.0.0.1:<port> to ``target`` (a unix socket path, or ``host:port``), from a
    process of its own (in the benchmark's process it would compete for the GIL)."""

    def __init__(self, target: str, delay_ms: float) -> None:
        self.target = target
        self.delay = delay_ms / 1000
        self.port = 0
        self._process: multiprocessing.Process | None = None

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.target.startswith("/"):
            return await asyncio.open_unix_connection(self.target)
        host, port = self.target.rsplit(":", 1)
        return await asyncio.open_connection(host, int(port))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.perf_counter() + self.delay, data))
            if not data:
                break
        await delivering

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await self._open_target()
        await asyncio.gather(
            self._pipe(reader, target_writer),
            self._pipe(target_reader, writer),
            return_exceptions=True,
        )

    async def _run(self, report: Connection) -> None:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        report.send(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    def _main(self, report: Connection) -> None:
        asyncio.run(self._run(report))

    def __enter__(self) -> int:
        receive, report = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(target=self._main, args=(report,), daemon=True)
        self._process.start()
        self.port = int(receive.recv())
        return self.port

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.join(timeout=5)
