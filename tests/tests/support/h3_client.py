"""An independent HTTP/3 client (aioquic, no Quiver code) for the receiver-side tests
(tests/tests/receiver.rs): it dials a proxy's QUIC port directly with the client certificate
it is given, as a workload that skips its own sidecar would, and sends GETs naming a mesh
service in `quiver-target`.

Prints one JSON object per request on stdout:
  {"status": 403, "error": "denied", "tag": ""}           a response
  {"closed": true, "error_code": 304, "reason": "..."}     the peer closed the connection
  {"timeout": true}                                        no answer in time
Exits 0 when it printed a result for every request, 3 when aioquic is missing.
"""

import argparse
import asyncio
import json
import ssl
import sys

try:
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated
except ImportError:
    print("aioquic is required: python3 -m pip install aioquic", file=sys.stderr)
    sys.exit(3)


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.pending = {}
        self.closed = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            self.closed = {
                "closed": True,
                "error_code": event.error_code,
                "reason": event.reason_phrase,
            }
            for fut, _ in self.pending.values():
                if not fut.done():
                    fut.set_result(self.closed)
            return
        for ev in self.h3.handle_event(event):
            entry = self.pending.get(ev.stream_id)
            if entry is None:
                continue
            fut, answer = entry
            if isinstance(ev, HeadersReceived):
                for name, value in ev.headers:
                    if name == b":status":
                        answer["status"] = int(value)
                    elif name == b"quiver-error":
                        answer["error"] = value.decode()
                    elif name == b"x-echo-tag":
                        answer["tag"] = value.decode()
            elif isinstance(ev, DataReceived):
                answer["bytes"] += len(ev.data)
            if getattr(ev, "stream_ended", False) and not fut.done():
                fut.set_result(answer)

    async def get(self, target, path, timeout):
        if self.closed:
            return self.closed
        stream_id = self._quic.get_next_available_stream_id()
        fut = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = (fut, {"status": 0, "error": "", "tag": "", "bytes": 0})
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", target.encode()),
                (b":path", path.encode()),
                (b"quiver-target", target.encode()),
            ],
            end_stream=True,
        )
        self.transmit()
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return self.closed or {"timeout": True}


async def run(args):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_cert_chain(args.cert, args.key)
    # The proxy's certificate names a SPIFFE id, not the address dialled; this client plays
    # a hostile workload, and what is under test is whether the proxy accepts *it*.
    config.verify_mode = ssl.CERT_NONE
    results = []
    try:
        async with connect(args.host, args.port, configuration=config, create_protocol=Client) as client:
            for _ in range(args.count):
                results.append(await client.get(args.target, args.path, args.timeout))
            # A refused client certificate may only show after the client's own handshake
            # finished (TLS 1.3: the server judges the client's Finished flight): give the
            # close a moment to arrive, and report it in place of silence.
            if not results or all("timeout" in r for r in results):
                await asyncio.sleep(0.5)
                if client.closed:
                    results = [client.closed] * args.count
    except ConnectionError as e:
        results = [{"closed": True, "error_code": -1, "reason": str(e)}] * args.count
    for r in results:
        print(json.dumps(r), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True, help="client certificate chain (PEM)")
    p.add_argument("--key", required=True, help="its private key (PEM)")
    p.add_argument("--target", required=True, help="quiver-target, e.g. reviews:9080")
    p.add_argument("--path", default="/")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args()
    asyncio.run(asyncio.wait_for(run(args), args.timeout * (args.count + 1)))


if __name__ == "__main__":
    main()
