"""The HTTP edge: readiness, Prometheus metrics, the list of registry problems and each proxy's sync state."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from meshbox.discovery.hub import Hub


def make_app(hub: Hub) -> web.Application:
    """GET /ready (200 once a registry snapshot is served), /metrics, /registry/errors, /debug/syncz (JSON)."""

    async def ready(_request: web.Request) -> web.Response:
        if hub.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="registry not loaded yet\n")

    async def metrics(_request: web.Request) -> web.Response:
        body = generate_latest(hub.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def registry_errors(_request: web.Request) -> web.Response:
        problems = hub.snapshot.problems if hub.snapshot else []
        return web.Response(text="".join(f"{p}\n" for p in problems))

    async def syncz(_request: web.Request) -> web.Response:
        return web.json_response({"proxies": hub.syncz()})

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/registry/errors", registry_errors)
    app.router.add_get("/debug/syncz", syncz)
    return app


async def start_http_server(hub: Hub, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the app on host:port (0 = any free port); returns the runner and the bound port."""
    runner = web.AppRunner(make_app(hub), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, int(runner.addresses[0][1])
