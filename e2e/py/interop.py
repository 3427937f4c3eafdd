"""Third-party clients and servers for the end-to-end tests: gRPC with
grpcio (gRPC C-core) and WebSocket with the `websockets` package. The tests
put Tern sidecars (and gateways) between them.

  interop.py grpc-server LISTEN
  interop.py grpc-client TARGET AUTHORITY CALLER_ID
  interop.py ws-server LISTEN
  interop.py ws-client PROXY HOST CALLER_ID
  interop.py ws-where PROXY HOST PATH
  interop.py ws-limit PROXY HOST
  interop.py ws-closed PROXY HOST

CALLER_ID is the SPIFFE ID the server must see for the caller (the one
its sidecar verified, not the one the client forges).

A client runs every check, prints one line per check, and exits 1 if any
failed (the line says which and why). Servers run until killed.
"""

import asyncio
import sys
import time
import traceback

SERVICE = "tern.interop.Interop"
BIG = 8 * 1024 * 1024
OPTIONS = [
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
]


def split(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


# ---- gRPC ----


def grpc_server(listen):
    from concurrent import futures

    import grpc

    def echo(req, ctx):
        md = dict(ctx.invocation_metadata())
        if req == b"whoami":
            return md.get("x-tern-client-id", "").encode()
        if req.startswith(b"fail"):
            ctx.set_trailing_metadata(
                (("x-reason", "bad input"), ("x-detail-bin", b"\x00\x01\xfe\xff"))
            )
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "the input was refused: " + req.decode())
        return req

    def sleep(req, ctx):
        ms = int(req.decode())
        end = time.monotonic() + ms / 1000
        while time.monotonic() < end and ctx.is_active():
            time.sleep(0.01)
        return b"slept"

    def count(req, ctx):
        for i in range(int(req.decode())):
            yield str(i).encode()

    def total(reqs, ctx):
        return str(sum(len(r) for r in reqs)).encode()

    def chat(reqs, ctx):
        for r in reqs:
            yield b"re:" + r

    h = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((h,))
    if server.add_insecure_port(listen) == 0:
        sys.exit(f"cannot listen on {listen}")
    server.start()
    print(f"grpc server on {listen}", flush=True)
    server.wait_for_termination()


def grpc_client(target, authority, caller_id):
    import grpc

    ch = grpc.insecure_channel(target, options=OPTIONS + [("grpc.default_authority", authority)])
    grpc.channel_ready_future(ch).result(timeout=30)
    m = lambda kind, name: getattr(ch, kind)(f"/{SERVICE}/{name}")  # noqa: E731

    def unary():
        out = m("unary_unary", "Echo")(b"hello", timeout=20)
        assert out == b"hello", out

    def identity():
        out = m("unary_unary", "Echo")(
            b"whoami", timeout=20, metadata=(("x-tern-client-id", "spiffe://forged"),)
        )
        assert out == caller_id.encode(), out

    def large():
        payload = bytes(range(256)) * (BIG // 256)
        out = m("unary_unary", "Echo")(payload, timeout=60)
        assert out == payload, f"{len(out)} bytes back"

    def error_in_trailers():
        try:
            m("unary_unary", "Echo")(b"fail-now", timeout=20)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
            assert e.details() == "the input was refused: fail-now", e.details()
            md = dict(e.trailing_metadata())
            assert md.get("x-reason") == "bad input", md
            assert md.get("x-detail-bin") == b"\x00\x01\xfe\xff", md
            return
        raise AssertionError("the call succeeded")

    def deadline():
        start = time.monotonic()
        try:
            m("unary_unary", "Sleep")(b"10000", timeout=1.0)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
            took = time.monotonic() - start
            assert took < 9, f"the deadline was not honoured: {took:.1f}s"
            return
        raise AssertionError("the call succeeded")

    def server_streaming():
        out = [r for r in m("unary_stream", "Count")(b"500", timeout=20)]
        assert out == [str(i).encode() for i in range(500)], len(out)

    def client_streaming():
        msgs = [b"x" * (i * 1000) for i in range(100)]
        out = m("stream_unary", "Total")(iter(msgs), timeout=20)
        assert out == str(sum(len(x) for x in msgs)).encode(), out

    def bidi():
        msgs = [f"m{i}".encode() for i in range(200)]
        out = list(m("stream_stream", "Chat")(iter(msgs), timeout=20))
        assert out == [b"re:" + x for x in msgs], out[:3]

    checks = [unary, identity, large, error_in_trailers, deadline, server_streaming,
              client_streaming, bidi]
    sys.exit(run(checks))


# ---- WebSocket ----


def ws_server(listen):
    from websockets.asyncio.server import serve

    async def handler(ws):
        async for msg in ws:
            if msg == "whoami":
                await ws.send(ws.request.headers.get("x-tern-client-id", ""))
            elif msg == "whereami":
                route = ws.request.headers.get("x-route", "-")
                await ws.send(f"{listen} {ws.request.path} {route}")
            else:
                await ws.send(msg)

    async def main():
        host, port = split(listen)
        async with serve(handler, host, port, max_size=None, subprotocols=["chat.v1"]):
            print(f"websocket server on {listen}", flush=True)
            await asyncio.get_running_loop().create_future()

    asyncio.run(main())


def ws_client(proxy, host, caller_id):
    from websockets.asyncio.client import connect

    phost, pport = split(proxy)

    def session(body):
        async def go():
            async with connect(
                f"ws://{host}/chat",
                host=phost,
                port=pport,
                max_size=None,
                subprotocols=["chat.v1"],
                open_timeout=20,
            ) as ws:
                await asyncio.wait_for(body(ws), 30)

        return lambda: asyncio.run(go())

    async def text(ws):
        assert ws.subprotocol == "chat.v1", ws.subprotocol
        for i in range(100):
            await ws.send(f"message {i}")
            got = await ws.recv()
            assert got == f"message {i}", got

    async def binary_large(ws):
        payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
        await ws.send(payload)
        got = await ws.recv()
        assert got == payload, f"{len(got)} bytes back"

    async def identity(ws):
        await ws.send("whoami")
        got = await ws.recv()
        assert got == caller_id, got

    checks = [session(text), session(binary_large), session(identity)]
    for c, name in zip(checks, ["text", "binary_large", "identity"]):
        c.__name__ = name
    sys.exit(run(checks))


def ws_where(proxy, host, path):
    """One session to ws://HOST/PATH: prints the server's `whereami`
    answer (its listen address, the path it was asked for, its x-route
    header) as `where: ...`, or the failure."""
    from websockets.asyncio.client import connect

    phost, pport = split(proxy)

    async def go():
        async with connect(
            f"ws://{host}{path}",
            host=phost,
            port=pport,
            subprotocols=["chat.v1"],
            open_timeout=20,
        ) as ws:
            await ws.send("whereami")
            return await asyncio.wait_for(ws.recv(), 30)

    from websockets.exceptions import InvalidStatus

    try:
        print(f"where: {asyncio.run(go())}", flush=True)
    except Exception as e:  # noqa: BLE001
        # A redirect is followed by the client, and fails on its http://
        # Location: the answer that refused the upgrade is the context.
        while e is not None and not isinstance(e, InvalidStatus):
            e = e.__context__
        if e is None:
            raise
        r = e.response
        print(f"refused: HTTP {r.status_code} {r.body!r}", flush=True)
        sys.exit(1)


def ws_session(proxy, host):
    from websockets.asyncio.client import connect

    phost, pport = split(proxy)
    return connect(
        f"ws://{host}/chat",
        host=phost,
        port=pport,
        subprotocols=["chat.v1"],
        open_timeout=20,
    )


async def ws_echo(ws):
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), 30) == "ping"


def ws_limit(proxy, host):
    """HOST's CircuitBreaker allows one connection: while a session is
    open a second upgrade gets 503 with `x-tern-circuit: max-connections`,
    and once the first closes a new session opens (its connection's place
    is given back when the connection closes, so this waits for it)."""
    from websockets.exceptions import InvalidStatus

    async def go():
        async with ws_session(proxy, host) as first:
            await ws_echo(first)
            try:
                async with ws_session(proxy, host):
                    raise AssertionError("a second session opened past maxConnections: 1")
            except InvalidStatus as e:
                r = e.response
                assert r.status_code == 503, r.status_code
                assert r.headers.get("x-tern-circuit") == "max-connections", r.headers
            await ws_echo(first)
        deadline = time.monotonic() + 60
        while True:
            try:
                async with ws_session(proxy, host) as third:
                    await ws_echo(third)
                    return
            except InvalidStatus:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    def limit():
        asyncio.run(go())

    sys.exit(run([limit]))


def ws_closed(proxy, host):
    """A session that works, then is left quiet, is closed by the mesh
    (HOST's streamDuration) within 60 s: no message comes, the connection
    ends."""
    from websockets.exceptions import ConnectionClosed

    async def go():
        async with ws_session(proxy, host) as ws:
            await ws_echo(ws)
            try:
                got = await asyncio.wait_for(ws.recv(), 60)
            except ConnectionClosed:
                return
            raise AssertionError(f"a message came instead of the close: {got!r}")

    def closed():
        asyncio.run(go())

    sys.exit(run([closed]))


def run(checks):
    failed = 0
    for c in checks:
        try:
            c()
            print(f"ok {c.__name__}", flush=True)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAILED {c.__name__}: {e!r}", flush=True)
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {
        "grpc-server": grpc_server,
        "grpc-client": grpc_client,
        "ws-server": ws_server,
        "ws-client": ws_client,
        "ws-where": ws_where,
        "ws-limit": ws_limit,
        "ws-closed": ws_closed,
    }[cmd](*args)
