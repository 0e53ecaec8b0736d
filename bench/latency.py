"""A TCP proxy that adds a fixed delay to every reply (server -> client), for counting round trips.

    python bench/latency.py LISTEN_PORT SERVER_PORT DELAY_MS

Each chunk the server sends is delivered DELAY_MS after it arrived, in order, so every
round trip costs DELAY_MS more and pipelined replies are not delayed twice. Point the
bench's DSNs at LISTEN_PORT: a tenant's time then grows by DELAY_MS per round trip it
makes, which shows round trips saved even on a loaded machine where milliseconds of
CPU drown in the noise.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            at, data = item
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except OSError:
        pass
    queue.put_nowait(None)
    await task


async def _main(listen: int, server: int, delay: float) -> None:
    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", server)
        await asyncio.gather(
            _pipe(creader, swriter, 0.0), _pipe(sreader, cwriter, delay), return_exceptions=True
        )

    proxy = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with proxy:
        await proxy.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000))
