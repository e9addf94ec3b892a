"""The gRPC edge: DiscoveryService/StreamResources on grpc.aio.

Responses leave as pre-encoded bytes (see payloads.py), so the handler is registered with an
identity serializer instead of the generated servicer; clients see ordinary DiscoveryResponses.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from meshbox.api.identity import WorkloadIdentity
from meshbox.api.v1 import discovery_pb2
from meshbox.discovery.hub import Hub, StreamSession
from meshbox.discovery.node_identity import NodeRefused, identity_from_certificate
from meshbox.discovery.stream_state import ProtocolError

SERVICE_NAME = "meshbox.api.v1.DiscoveryService"
log = logging.getLogger("meshbox.discovery")


def peer_identity(context: grpc.aio.ServicerContext, trust_domain: str) -> WorkloadIdentity:
    """The SPIFFE identity of the stream's client certificate (TLS has already verified the chain)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        raise NodeRefused("no client certificate (connect with the workload certificate, over mutual TLS)")
    return identity_from_certificate(pems[0], trust_domain)


async def _write_outbox(session: StreamSession, context: grpc.aio.ServicerContext) -> None:
    while True:
        for data in await session.next_writes():
            await context.write(data)


def stream_handler(hub: Hub) -> grpc.GenericRpcHandler:
    """A generic handler serving StreamResources from ``hub``."""

    async def stream_resources(_requests: object, context: grpc.aio.ServicerContext) -> None:
        identity = None
        if hub.trust_domain is not None:
            try:
                identity = peer_identity(context, hub.trust_domain)
            except NodeRefused as exc:
                log.warning("discovery stream from %s refused: %s", context.peer(), exc)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        session = hub.open_session(identity)
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
                except NodeRefused as exc:
                    log.warning("discovery stream from %s (%s) refused node %r: %s", context.peer(), identity,
                                request.node.id, exc)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
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


def add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc reports a failed bind this way
        raise OSError(f"cannot listen for gRPC on {address} (address in use?)") from exc


def new_grpc_server(hub: Hub) -> grpc.aio.Server:
    """A grpc.aio server with the discovery handler; ports are added by the caller."""
    server = grpc.aio.server(options=[
        ("grpc.max_concurrent_streams", 100_000),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    server.add_generic_rpc_handlers((stream_handler(hub),))
    return server


async def start_grpc_server(hub: Hub, host: str, port: int,
                            credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """Start serving on host:port (0 = any free port), plaintext or with ``credentials``."""
    server = new_grpc_server(hub)
    bound = add_port(server, f"{host}:{port}", credentials)
    await server.start()
    return server, bound
