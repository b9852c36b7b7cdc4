"""serve's listening socket: connections it accepts send each write at once (TCP_NODELAY).

Without it an answer's body waits for the client's delayed ACK of the headers (about 40 ms a request on
Linux), which made every request of the load test and the latency figures 40 ms slower.
"""

import asyncio
import socket

from pipeline.serve.cli import bind


def test_connections_accepted_by_the_serve_socket_have_tcp_nodelay():
    async def accepted_nodelay():
        listener = bind("127.0.0.1", 0)
        seen = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            seen.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=listener)  # as uvicorn serves the socket it is given
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
