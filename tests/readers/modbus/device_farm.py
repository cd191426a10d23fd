"""A device farm for tests: many Modbus TCP devices on loopback ports, in a process of its own.

``python device_farm.py ANSWERING HUNG GARBAGE`` prints one JSON line, the ports of each kind
(``answer``, ``hang``, ``garbage``), and serves until its input ends. An answering device ``d``
holds 20 holding registers, register ``r`` holding ``d + r``; a hung one accepts and never
answers; a garbage one answers every request with bytes that are no Modbus frame.
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import sys

REGISTERS = 20


class Device(asyncio.Protocol):
    def __init__(self, mode: str, index: int) -> None:
        self.mode = mode
        self.index = index
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        while len(buffer) >= 8 and len(buffer) >= 6 + int.from_bytes(buffer[4:6], "big"):
            end = 6 + int.from_bytes(buffer[4:6], "big")
            frame, buffer = buffer[:end], buffer[end:]
            if self.mode == "hang" or self.transport is None:
                continue
            if self.mode == "garbage":
                self.transport.write(b"\xde\xad\xbe\xef" * 4)
                continue
            function, start, count = struct.unpack_from(">BHH", frame, 7)
            if function == 3 and count > 0 and start + count <= REGISTERS:
                values = range(self.index + start, self.index + start + count)
                pdu = struct.pack(f">BB{count}H", 3, 2 * count, *values)
            else:
                pdu = bytes((function | 0x80, 2))
            self.transport.write(frame[:4] + struct.pack(">HB", len(pdu) + 1, frame[6]) + pdu)
        self.buffer = buffer


async def serve(counts: dict[str, int]) -> None:
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    ports: dict[str, list[int]] = {}
    for mode, n in counts.items():
        ports[mode] = []
        for index in range(n):
            server = await loop.create_server(lambda m=mode, i=index: Device(m, i), "127.0.0.1", 0)
            servers.append(server)
            ports[mode].append(server.sockets[0].getsockname()[1])
    print(json.dumps(ports), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until the test closes our input
    for server in servers:
        server.close()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16_384)), hard))
    answering, hung, garbage = (int(arg) for arg in sys.argv[1:4])
    asyncio.run(serve({"answer": answering, "hang": hung, "garbage": garbage}))
