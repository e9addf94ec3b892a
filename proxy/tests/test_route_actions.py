"""Route actions through a real proxy and real sockets: header operations, rewrites, redirects, local rate
limiting and mirroring (Istio's headers / rewrite / redirect / mirror fields, Envoy's local rate limit)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.metrics_exposition import render
from meshbox.proxy.snapshot import ConfigRejected, Workload


def _route(**fields: Any) -> dict[str, Any]:
    return {"clusters": [{"cluster": "main", "weight": 100}], **fields}


def test_header_operations_on_request_and_response(kit: Any, tmp_path: Path) -> None:
    async def main() -> tuple[Any, Any]:
        backend = await kit.Backend("main").start()
        port = kit.free_port()
        route = {
            "request_headers": {"set": [{"name": "x-set", "value": "route"}], "add": [{"name": "x-add", "value": "1"}],
                                "remove": ["x-secret"]},
            "response_headers": {"set": [{"name": "x-backend", "value": "hidden"}],
                                 "add": [{"name": "x-route", "value": "r1"}], "remove": ["content-type"]},
            "clusters": [{"cluster": "main", "weight": 100,
                          "request_headers": {"add": [{"name": "x-add", "value": "2"}]},
                          "response_headers": {"set": [{"name": "x-dest", "value": "main"}]}}],
        }
        config = kit.http_config(port, {"main": [backend.port]}, routes=[route])
        async with kit.proxy(config, tmp_path):
            resp = await kit.get(port, headers=[("x-set", "client"), ("x-secret", "s"), ("x-add", "0")])
        backend.close()
        return resp, backend.requests[0]

    resp, seen = kit.run(main())
    assert resp.status == 200
    assert [v for n, v in seen.headers if n == b"x-set"] == [b"route"]
    assert [v for n, v in seen.headers if n == b"x-add"] == [b"0", b"1", b"2"]
    assert seen.header(b"x-secret") is None
    assert resp.header(b"x-backend") == b"hidden"
    assert resp.header(b"x-route") == b"r1"
    assert resp.header(b"x-dest") == b"main"
    assert resp.header(b"content-type") is None
    assert resp.json()["backend"] == "main"  # the body and its framing are untouched


def test_prefix_and_authority_rewrite(kit: Any, tmp_path: Path) -> None:
    async def main() -> list[Any]:
        backend = await kit.Backend("main").start()
        port = kit.free_port()
        routes = [_route(match={"prefix": "/old/"}, rewrite={"prefix": "/new/", "authority": "rewritten.example"}),
                  _route(match={"prefix": "/strip"}, rewrite={"prefix": "/"}),
                  _route(match={"prefix": "/service/"},
                         rewrite={"regex": "^/service/([^/]+)(/.*)$", "regex_substitution": "\\2/instance/\\1"}),
                  _route()]
        config = kit.http_config(port, {"main": [backend.port]}, routes=routes)
        async with kit.proxy(config, tmp_path):
            client = await kit.Client.connect(port)
            for target in ("/old/a?q=1", "/strip/b", "/service/foo/v1/api?x=/service/y/z", "/other"):
                assert (await client.request(target=target, host="svc:8080",
                                             headers=[("x-envoy-original-path", "/forged")])).status == 200
            client.close()
        backend.close()
        return backend.requests

    first, second, regex, third = kit.run(main())
    assert first.target == b"/new/a?q=1"
    assert first.header(b"host") == b"rewritten.example"
    assert [v for n, v in first.headers if n == b"x-envoy-original-path"] == [b"/old/a?q=1"]
    assert second.target == b"//b"  # Envoy's plain prefix replacement: "/strip" → "/" keeps the next "/"
    assert regex.target == b"/v1/api/instance/foo?x=/service/y/z"  # the query is left alone
    assert regex.header(b"x-envoy-original-path") == b"/service/foo/v1/api?x=/service/y/z"
    assert third.target == b"/other" and third.header(b"host") == b"svc:8080"
    assert third.header(b"x-envoy-original-path") == b"/forged"  # no rewrite: passed through


def test_redirect_is_answered_by_the_proxy(kit: Any, tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], list[str], int]:
        backend = await kit.Backend("main").start()
        port = kit.free_port()
        routes = [_route(match={"prefix": "/moved"}, redirect={"path": "/new/place", "authority": "other.example"}),
                  _route(match={"prefix": "/secure"}, redirect={"scheme": "https", "code": 308}),
                  _route(match={"prefix": "/port"}, redirect={"port": 8443, "code": 302})]
        config = kit.http_config(port, {"main": [backend.port]}, routes=routes)
        async with kit.proxy(config, tmp_path) as p:
            client = await kit.Client.connect(port)
            answers = [await client.request(target=t, host="svc.example:8080")
                       for t in ("/moved/x?a=1", "/secure/y", "/port/z")]
            client.close()
            lines = await p.wait_log(3)
        backend.close()
        return answers, lines, len(backend.requests)

    answers, lines, upstream = kit.run(main())
    assert [(r.status, r.header(b"location")) for r in answers] == [
        (301, b"http://other.example/new/place"),
        (308, b"https://svc.example/secure/y"),
        (302, b"http://svc.example:8443/port/z"),
    ]
    assert upstream == 0
    assert all(kit.log_fields(line)[3] == "-" for line in lines), lines  # no response flag, as Envoy logs it


def test_local_rate_limit_answers_429_rl(kit: Any, tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], str, list[str]]:
        backend = await kit.Backend("main").start()
        port = kit.free_port()
        routes = [_route(match={"prefix": "/limited"},
                         rate_limit={"max_tokens": 3, "tokens_per_fill": 2, "fill_interval": "0.3s"}),
                  _route()]
        config = kit.http_config(port, {"main": [backend.port]}, routes=routes)
        async with kit.proxy(config, tmp_path) as p:
            client = await kit.Client.connect(port)
            burst = [(await client.request(target="/limited")).status for _ in range(5)]
            # Other routes have no limit.
            assert (await client.request(target="/free")).status == 200
            await asyncio.sleep(0.35)
            refill = [(await client.request(target="/limited")).status for _ in range(3)]
            client.close()
            lines = await p.wait_log(9)
            metrics = render([p.ctx.stats]).decode()
        backend.close()
        return burst, refill, metrics, lines

    burst, refill, metrics, lines = kit.run(main())
    assert burst == [200, 200, 200, 429, 429]
    assert refill == [200, 200, 429]
    assert "meshbox_proxy_http_local_rate_limit_rate_limited_total 3" in metrics
    assert "meshbox_proxy_http_local_rate_limit_ok_total 5" in metrics
    assert 'response_code="429",response_flags="RL"' in metrics
    assert sum(" 429 RL " in line for line in lines) == 3, lines


def _mirror_config(kit: Any, port: int, main: int, mirror: int, **mirror_fields: Any) -> Any:
    config = kit.http_config(port, {"main": [main], "shadow": [mirror]},
                             routes=[_route(mirrors=[{"cluster": "shadow", **mirror_fields}])])
    return config


def test_mirror_gets_a_copy_and_its_answer_is_dropped(kit: Any, tmp_path: Path) -> None:
    async def main() -> tuple[list[Any], Any, Any, str]:
        async def mirror_answer(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 500 Mirror\r\ncontent-length: 6\r\nx-backend: mirror\r\n\r\nmirror")
            return True

        main_backend = await kit.Backend("main").start()
        mirror = await kit.Backend("mirror", handler=mirror_answer).start()
        port = kit.free_port()
        async with kit.proxy(_mirror_config(kit, port, main_backend.port, mirror.port, all=True), tmp_path) as p:
            client = await kit.Client.connect(port)
            answers = [await client.request(target=f"/r{i}", host="reviews:9080", headers=[("x-user", "u")])
                       for i in range(5)]
            client.close()
            deadline = time.monotonic() + 5
            while len(mirror.requests) < 5 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            metrics = render([p.ctx.stats]).decode()
        main_backend.close()
        mirror.close()
        return answers, main_backend, mirror, metrics

    answers, main_backend, mirror, metrics = kit.run(main())
    assert [(r.status, r.json()["backend"]) for r in answers] == [(200, "main")] * 5
    assert len(main_backend.requests) == 5
    assert sorted(r.target for r in mirror.requests) == [b"/r%d" % i for i in range(5)]
    seen = mirror.requests[0]
    assert seen.header(b"host") == b"reviews-shadow:9080"
    assert seen.header(b"x-user") == b"u"
    assert seen.header(b"x-request-id") is not None
    assert main_backend.requests[0].header(b"host") == b"reviews:9080"
    assert "meshbox_proxy_mirror_requests_total 5" in metrics


def test_slow_or_dead_mirror_never_delays_the_request(kit: Any, tmp_path: Path) -> None:
    async def main() -> tuple[float, float, list[int], str]:
        async def never(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
            await asyncio.sleep(30)
            return False

        main_backend = await kit.Backend("main").start()
        slow = await kit.Backend("slow", handler=never).start()
        dead_port = kit.free_port()  # nothing listens there
        port = kit.free_port()
        config = kit.http_config(port, {"main": [main_backend.port], "slow": [slow.port], "dead": [dead_port]},
                                 routes=[_route(timeout="1s", mirrors=[{"cluster": "slow", "all": True},
                                                                       {"cluster": "dead", "percent": 100}])])
        async with kit.proxy(config, tmp_path) as p:
            client = await kit.Client.connect(port)
            started = time.monotonic()
            statuses = [(await client.request()).status for _ in range(10)]
            elapsed = time.monotonic() - started
            client.close()
            # The slow mirror's copies give up at the route timeout; nothing is left behind.
            await asyncio.sleep(1.3)
            metrics = render([p.ctx.stats]).decode()
            from meshbox.proxy import mirroring
            left = mirroring.in_flight(p.ctx)
        main_backend.close()
        slow.close()
        return elapsed, left, statuses, metrics

    elapsed, left, statuses, metrics = kit.run(main())
    assert statuses == [200] * 10
    assert elapsed < 1.0, elapsed
    assert left == 0
    assert "meshbox_proxy_mirror_requests_total 20" in metrics
    assert "meshbox_proxy_mirror_failed_total 20" in metrics


def test_mirror_percentage_and_bounded_in_flight(kit: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshbox.proxy import mirroring

    monkeypatch.setattr(mirroring, "MAX_IN_FLIGHT", 4)

    async def main() -> tuple[int, int, str]:
        async def hold(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
            await asyncio.sleep(0.5)
            return False

        main_backend = await kit.Backend("main").start()
        mirror = await kit.Backend("mirror", handler=hold).start()
        none_port, port = kit.free_port(), kit.free_port()
        async with kit.proxy(_mirror_config(kit, port, main_backend.port, mirror.port, all=True), tmp_path) as p:
            client = await kit.Client.connect(port)
            for _ in range(10):
                assert (await client.request()).status == 200
            client.close()
            metrics = render([p.ctx.stats]).decode()
        async with kit.proxy(_mirror_config(kit, none_port, main_backend.port, mirror.port, percent=0),
                             tmp_path) as p2:
            assert (await kit.get(none_port)).status == 200
            metrics_none = render([p2.ctx.stats]).decode()
        main_backend.close()
        mirror.close()
        return len(main_backend.requests), metrics.count("mirror_dropped_total 6"), metrics_none

    served, dropped, metrics_none = kit.run(main())
    assert served == 11
    assert dropped == 1
    assert "mirror_requests" not in metrics_none


@pytest.mark.parametrize(("field", "value", "error"), [
    ("redirect", {"code": 200}, r"redirect.code: must be one of 301"),
    ("redirect", {"scheme": "ftp"}, r"redirect.scheme"),
    ("request_headers", {"set": [{"name": "content-length", "value": "1"}]}, r"cannot edit header .content-length."),
    ("response_headers", {"add": [{"name": "x-a", "value": "a\r\nb"}]}, r"control characters"),
    ("mirrors", [{"cluster": "nowhere", "all": True}], r"unknown cluster 'nowhere'"),
    ("rate_limit", {"max_tokens": 0, "fill_interval": "1s"}, r"rate_limit.max_tokens"),
    ("rate_limit", {"max_tokens": 5}, r"rate_limit.fill_interval"),
    ("rewrite", {"regex": "^/(a", "regex_substitution": "/"}, r"rewrite.regex: not a regular expression"),
    ("rewrite", {"regex": "^/(a)", "regex_substitution": "/\\3"}, r"rewrite.regex_substitution"),
    ("rewrite", {"prefix": "/x", "regex": "^/a"}, r"either prefix or regex"),
])
def test_unappliable_actions_are_refused(kit: Any, field: str, value: Any, error: str) -> None:
    config = kit.http_config(1080, {"main": [1]}, routes=[_route(**{field: value})])
    with pytest.raises(ConfigRejected, match=error):
        compile_config(config, Workload())


def test_mirror_copies_bodies_up_to_the_limit(kit: Any, tmp_path: Path) -> None:
    from meshbox.proxy.attempt_outcomes import MIRROR_BODY_LIMIT

    async def main() -> tuple[list[Any], Any, str]:
        main_backend = await kit.Backend("main").start()
        mirror = await kit.Backend("mirror").start()
        port = kit.free_port()
        async with kit.proxy(_mirror_config(kit, port, main_backend.port, mirror.port, all=True), tmp_path) as p:
            client = await kit.Client.connect(port)
            answers = [
                await client.request("POST", "/small", body=b"a" * 1000),
                await client.request("POST", "/chunked", body=b"xyz" * 10,
                                     headers=[("transfer-encoding", "chunked")]),
                await client.request("POST", "/big", body=b"b" * (MIRROR_BODY_LIMIT + 1)),
                await client.request("POST", "/big-chunked", body=b"c" * (MIRROR_BODY_LIMIT + 1),
                                     headers=[("transfer-encoding", "chunked")]),
            ]
            client.close()
            deadline = time.monotonic() + 5
            while len(mirror.requests) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            metrics = render([p.ctx.stats]).decode()
        main_backend.close()
        mirror.close()
        return answers, mirror, metrics

    answers, mirror, metrics = kit.run(main())
    assert [a.status for a in answers] == [200] * 4
    assert [len(a.json()["body"]) for a in answers] == [1000, 30, MIRROR_BODY_LIMIT + 1, MIRROR_BODY_LIMIT + 1]
    copies = {r.target: r for r in mirror.requests}
    assert sorted(copies) == [b"/chunked", b"/small"]
    assert copies[b"/small"].body == b"a" * 1000
    assert copies[b"/chunked"].body == b"xyz" * 10
    assert copies[b"/chunked"].header(b"content-length") == b"30"
    assert "meshbox_proxy_mirror_skipped_body_total 2" in metrics
