"""The cheapest HTTP/1.1 server this machine runs: frames requests, answers a constant.

No routing, no JSON, no framework: an asyncio protocol on uvloop that finds the end
of each request (headers, then Content-Length bytes) and writes a pre-built
response. It measures what a load generator can drive from one core, since every
real server (the FastAPI floor, batchserve) costs more per request than this.

Usage: python benchmarks/wire_floor.py PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

BODY = b'{"model":"diabetes","outputs":[150.0]}'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class WireFloor(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            marker = head.find(b"content-length:")
            line_end = head.find(b"\r\n", marker)
            length = int(head[marker + 15:line_end if line_end >= 0 else None]) if marker >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[:end + 4 + length]
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(WireFloor, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
