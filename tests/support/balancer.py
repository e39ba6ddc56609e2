"""A round-robin TCP load balancer for tests: each new client connection goes to the next
node, as a layer-4 balancer in front of several Dockyard nodes would send it.

It runs in a thread of the test process with its own event loop and copies bytes both ways
until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence

from tests.support.processes import free_port


class Balancer:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self.port = free_port()
        self.connections = [0] * len(self.backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)
        self._server: asyncio.Server | None = None
        self._error: BaseException | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port)
            )
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        # stopped: end the connections still open, then the loop
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = next(self._next)
        self.connections[index] += 1
        host, port = self.backends[index]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                side.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            if writer.is_closing():
                continue  # the other side is gone: drain, as a server does, so that
                # closing does not reset a connection whose answer is still unread
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                writer.close()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()


@contextlib.contextmanager
def balancing(backends: Sequence[tuple[str, int]]) -> Iterator[Balancer]:
    balancer = Balancer(backends).start()
    try:
        yield balancer
    finally:
        balancer.stop()
