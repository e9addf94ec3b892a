"""The gRPC edge: DiscoveryService/StreamResources on grpc.aio.

Responses leave as pre-encoded bytes (see payloads.py), so the handler is registered with an
identity serializer instead of the generated servicer; clients see ordinary DiscoveryResponses.
"""

from __future__ import annotations

import asyncio

import grpc

from meshbox.api.v1 import discovery_pb2
from meshbox.discovery.hub import Hub, StreamSession
from meshbox.discovery.stream_state import ProtocolError

SERVICE_NAME = "meshbox.api.v1.DiscoveryService"


async def _write_outbox(session: StreamSession, context: grpc.aio.ServicerContext) -> None:
    while True:
        for data in await session.next_writes():
            await context.write(data)


def stream_handler(hub: Hub) -> grpc.GenericRpcHandler:
    """A generic handler serving StreamResources from ``hub``."""

    async def stream_resources(_requests: object, context: grpc.aio.ServicerContext) -> None:
        session = hub.open_session()
        writer = asyncio.create_task(_write_outbox(session, context))
        try:
            while True:
                request = await context.read()
                if request is grpc.aio.EOF:
                    break
                assert isinstance(request, discovery_pb2.DiscoveryRequest)
                try:
                    session.handle(request)
                except ProtocolError as exc:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                if writer.done():
                    break
        finally:
            hub.close_session(session)
            writer.cancel()
            # Whatever the writer failed with (the peer went away mid-write) no longer matters.
            await asyncio.gather(writer, return_exceptions=True)

    method = grpc.stream_stream_rpc_method_handler(
        stream_resources,
        request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
        response_serializer=bytes,
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {"StreamResources": method})


async def start_grpc_server(hub: Hub, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start serving on host:port (0 = any free port); returns the server and its port."""
    server = grpc.aio.server(options=[
        ("grpc.max_concurrent_streams", 100_000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    server.add_generic_rpc_handlers((stream_handler(hub),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen for gRPC on {host}:{port} (address in use?)") from exc
    await server.start()
    return server, bound
