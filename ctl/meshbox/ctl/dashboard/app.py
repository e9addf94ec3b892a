"""The dashboard's web application (aiohttp): the page, its static files and the JSON API.

- ``GET /`` the page; ``GET /static/...`` its script and style (package data, nothing fetched from elsewhere);
- ``GET /api/graph?window=1m`` nodes and edges with rps, error rate, p50 and p99 (ms);
- ``GET /api/workload?id=<ns>/<workload>&window=1m&minutes=15`` golden-signal series of one workload.

A bad parameter is a 400 naming it; Prometheus unreachable or refusing is a 502 saying why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from meshbox.ctl.dashboard.prometheus_api import Prometheus, PrometheusError
from meshbox.ctl.dashboard.queries import BadQuery, graph, workload_signals

PROMETHEUS: web.AppKey[Prometheus] = web.AppKey("prometheus", Prometheus)
STATIC = resources.files("meshbox.ctl.dashboard") / "static"


def _json_api(handler: Callable[[web.Request], Awaitable[dict[str, Any]]]
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return web.json_response(await handler(request))
        except BadQuery as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except PrometheusError as exc:
            return web.json_response({"error": str(exc)}, status=502)
    return wrapped


async def _graph(request: web.Request) -> dict[str, Any]:
    return await graph(request.app[PROMETHEUS], request.query.get("window", "1m"))


async def _workload(request: web.Request) -> dict[str, Any]:
    minutes = request.query.get("minutes", "15")
    if not minutes.isdigit():
        raise BadQuery(f"minutes {minutes!r}: give a whole number")
    return await workload_signals(request.app[PROMETHEUS], request.query.get("id", ""),
                                  request.query.get("window", "1m"), int(minutes))


async def _static(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    types = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
    suffix = name[name.rfind("."):]
    if "/" in name or suffix not in types or not (STATIC / name).is_file():
        raise web.HTTPNotFound(text=f"no such file {name}")
    return web.Response(body=(STATIC / name).read_bytes(), content_type=types[suffix], charset="utf-8")


def make_app(prometheus: Prometheus) -> web.Application:
    """The application around one Prometheus client (opened and closed with the application)."""
    app = web.Application()
    app[PROMETHEUS] = prometheus

    async def session(_app: web.Application) -> Any:
        async with prometheus:
            yield

    app.cleanup_ctx.append(session)
    app.router.add_get("/", _static)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/api/graph", _json_api(_graph))
    app.router.add_get("/api/workload", _json_api(_workload))
    return app


async def start(prometheus: Prometheus, port: int) -> tuple[web.AppRunner, str]:
    """Serve on 127.0.0.1:port (0: a free port); returns the runner and the page's URL."""
    runner = web.AppRunner(make_app(prometheus), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot serve the dashboard on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    bound = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{bound}/"
