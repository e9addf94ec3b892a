"""The gRPC edge of the discovery stream: connect, feed responses to the state machine,
apply its candidates to the proxy, send its ACKs and NACKs, reconnect with backoff.

Responses that arrive together (the server pushes changed types back to back, clusters
before the listeners and routes that use them) are taken in as one batch and applied as
one config. A push split across batches still applies safely: in make-before-break order
every intermediate config is valid, and one that is not (a cluster removed before the
routes that used it) waits PARTNER_WAIT_S for the rest of the push instead of being NACKed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import grpc

from meshbox.agent.backoff import Backoff
from meshbox.agent.config_applier import ConfigApplier
from meshbox.agent.discovery_stream import DiscoveryStream
from meshbox.agent.proxy_admin import ConfigRejected
from meshbox.agent.resources import ResourceError, short_name
from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc
from meshbox.api.validation import ValidationError, validate_proxy_config

log = logging.getLogger("meshbox.agent")

SETTLE_S = 0.01  # how long to wait for the rest of a burst of responses before applying
PARTNER_WAIT_S = 1.0  # how long an inconsistent candidate waits for the rest of its push before a NACK
STABLE_S = 1.0  # a stream that stayed up this long resets the reconnect backoff, even with no response
_EOF = object()


class DiscoveryClient:
    """Keeps one stream to ``address`` open for as long as :meth:`run` runs."""

    def __init__(
        self,
        address: str,
        node: discovery_pb2.Node,
        applier: ConfigApplier,
        *,
        backoff: Backoff,
        rng: random.Random,
        settle: float = SETTLE_S,
        credentials: Callable[[], Awaitable[grpc.ChannelCredentials]] | None = None,
        server_name: str = "",
    ) -> None:
        """``credentials`` (TLS) is awaited before each connection; None means plaintext."""
        self.address = address
        self._credentials = credentials
        self._server_name = server_name
        self.state = DiscoveryStream(node)
        self._applier = applier
        self._backoff = backoff
        self._rng = rng
        self._settle = settle
        self.connected = False

    async def run(self) -> None:
        """Stream forever; between streams wait a backoff delay, reset by a stream that worked."""
        attempt = 0
        while True:
            worked = await self._stream_once()
            self.connected = False
            attempt = 0 if worked else min(attempt + 1, 16)
            delay = self._backoff.delay(attempt, self._rng.random())
            log.info("reconnecting to discovery at %s in %.2fs", self.address, delay)
            await asyncio.sleep(delay)

    async def _stream_once(self) -> bool:
        """One stream until it ends; whether it worked, which resets the reconnect backoff.

        A server in sync with the agent's versions sends nothing after a reconnect, so a stream
        also counts as working once it is connected and either stayed up STABLE_S or ended
        because the server went away (not because it refused the agent).
        """
        loop = asyncio.get_running_loop()
        got_response = False
        connected_at: float | None = None

        def worked(server_gone: bool) -> bool:
            if got_response:
                return True
            return connected_at is not None and (server_gone or loop.time() - connected_at >= STABLE_S)

        async with await self._channel() as channel:
            call = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamResources()
            inbox: asyncio.Queue[object] = asyncio.Queue()
            reader = asyncio.create_task(self._read(call, inbox))
            try:
                for request in self.state.connect_requests():
                    await call.write(request)
                await call.wait_for_connection()
                connected_at = loop.time()
                self.connected = True
                log.info("connected to discovery at %s, running %s", self.address,
                         _versions(self.state.acked_versions()))
                while True:
                    batch = await self._next_batch(inbox)
                    if batch is None:
                        log.warning("discovery at %s closed the stream", self.address)
                        return worked(server_gone=True)
                    got_response = True
                    await self._handle(call, inbox, batch)
            except grpc.RpcError as exc:
                log.warning("discovery stream to %s failed: %s", self.address, _describe(exc))
                gone = isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNAVAILABLE
                return worked(server_gone=gone)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                call.cancel()

    async def _channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.address)
        options = [("grpc.ssl_target_name_override", self._server_name)] if self._server_name else []
        return grpc.aio.secure_channel(self.address, await self._credentials(), options=options)

    @staticmethod
    async def _read(call: grpc.aio.StreamStreamCall, inbox: asyncio.Queue[object]) -> None:
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    await inbox.put(_EOF)
                    return
                await inbox.put(response)
        except grpc.RpcError as exc:
            await inbox.put(exc)

    async def _next_batch(
        self, inbox: asyncio.Queue[object], first_timeout: float | None = None
    ) -> list[discovery_pb2.DiscoveryResponse] | None:
        """The next response plus whatever follows within the settle time; None at end of stream.

        With ``first_timeout``, an empty list when nothing arrives within it.
        """
        batch: list[discovery_pb2.DiscoveryResponse] = []
        try:
            item = await asyncio.wait_for(inbox.get(), first_timeout)
        except TimeoutError:
            return batch
        while True:
            if isinstance(item, grpc.RpcError):
                raise item
            if item is _EOF:
                if batch:
                    inbox.put_nowait(_EOF)  # handle what came first, then end
                    return batch
                return None
            assert isinstance(item, discovery_pb2.DiscoveryResponse)
            batch.append(item)
            try:
                item = await asyncio.wait_for(inbox.get(), self._settle)
            except TimeoutError:
                return batch

    async def _handle(
        self,
        call: grpc.aio.StreamStreamCall,
        inbox: asyncio.Queue[object],
        batch: list[discovery_pb2.DiscoveryResponse],
    ) -> None:
        await self._receive(call, batch)
        while (config := self.state.candidate()) is not None:
            if self.state.is_applied(config):
                await self._send(call, self.state.applied(config))
                return
            try:
                validate_proxy_config(config, source="discovery")
            except ValidationError as exc:
                # Perhaps half a push whose other half is on its way (clusters without the routes
                # that stop using a removed one): give the rest PARTNER_WAIT_S to arrive.
                more = await self._next_batch(inbox, first_timeout=PARTNER_WAIT_S)
                if more is None:
                    inbox.put_nowait(_EOF)  # the stream ended; the next one starts over
                    return
                if more:
                    await self._receive(call, more)
                    continue
                await self._send(call, self.state.rejected(str(exc)))
                return
            try:
                await self._applier.apply(config)
            except ConfigRejected as exc:
                await self._send(call, self.state.rejected(str(exc)))
                return
            await self._send(call, self.state.applied(config))
            log.info("applied config %s", _versions(self.state.acked_versions()))
            return

    async def _receive(self, call: grpc.aio.StreamStreamCall, batch: list[discovery_pb2.DiscoveryResponse]) -> None:
        for response in batch:
            try:
                replies = self.state.receive(response)
            except ResourceError as exc:
                log.error("ignoring a discovery response: %s", exc)
                continue
            await self._send(call, replies)

    async def _send(self, call: grpc.aio.StreamStreamCall, requests: list[discovery_pb2.DiscoveryRequest]) -> None:
        for request in requests:
            if request.HasField("error_detail"):
                log.warning(
                    "NACK %s (nonce %s), keeping version %r: %s",
                    short_name(request.type_url), request.response_nonce, request.version_info,
                    request.error_detail.message,
                )
            await call.write(request)


def _versions(versions: dict[str, str]) -> str:
    return " ".join(f"{name}={version or '-'}" for name, version in versions.items())


def _describe(exc: grpc.RpcError) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
