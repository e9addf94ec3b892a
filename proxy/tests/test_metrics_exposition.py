"""The proxy's own Prometheus text exposition, read back by prometheus_client's parser (what Prometheus
accepts): label escaping, cumulative histogram buckets, TCP families, counters, and workers' sums."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from meshbox.proxy.metrics import DURATION_BUCKETS, SIZE_BUCKETS, Stats
from meshbox.proxy.metrics_exposition import render

ODD = 'we"ird\\name\nx'
LABELS = ("source", "sleep", "default", "sleep", ODD, "shop", "reviews",
          "reviews.shop.svc.cluster.local", "reviews", "shop", "unknown", "spiffe://cluster.local/ns/default/sa/sleep",
          "unknown")


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_exposition_parses_with_escaped_labels_and_cumulative_buckets() -> None:
    one, two = Stats(), Stats()
    one.request(LABELS, 200, "-", 3.0, 0, 5)
    one.request(LABELS, 200, "-", 700.0, 1234, 20000)
    two.request(LABELS, 200, "-", 0.2, 10, 10)
    two.request(LABELS, 503, "UF", 12.0, 0, 91)
    one.tcp_opened(LABELS)
    one.tcp_closed(LABELS, "-", 10, 20)
    two.incr("upstream_rq_retry", 2)
    samples = _samples(render([one, two]).decode())

    requests = {labels["response_code"]: value for labels, value in samples["istio_requests_total"]}
    assert requests == {"200": 3.0, "503": 1.0}
    ok_labels = next(labels for labels, _ in samples["istio_requests_total"] if labels["response_code"] == "200")
    assert ok_labels["destination_workload"] == ODD and ok_labels["request_protocol"] == "http"
    buckets = [(labels["le"], value) for labels, value in samples["istio_request_duration_milliseconds_bucket"]
               if labels["response_code"] == "200"]
    assert len(buckets) == len(DURATION_BUCKETS) + 1 and buckets[-1] == ("+Inf", 3.0)
    assert dict(buckets)["0.5"] == 1.0 and dict(buckets)["5.0"] == 2.0 and dict(buckets)["500.0"] == 2.0
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    sums = {labels["response_code"]: value for labels, value in samples["istio_request_duration_milliseconds_sum"]}
    assert sums == {"200": 703.2, "503": 12.0}
    request_sizes = [(labels["le"], value) for labels, value in samples["istio_request_bytes_bucket"]
                     if labels["response_code"] == "200"]
    assert len(request_sizes) == len(SIZE_BUCKETS) + 1
    # 0 and 10 bytes fall in le=1 and le=10 (bounds are inclusive), 1234 in le=10000.
    assert dict(request_sizes) == {"1.0": 1.0, "10.0": 2.0, "100.0": 2.0, "1000.0": 2.0, "10000.0": 3.0,
                                   "100000.0": 3.0, "1000000.0": 3.0, "10000000.0": 3.0, "+Inf": 3.0}
    response_sums = {labels["response_code"]: value for labels, value in samples["istio_response_bytes_sum"]}
    assert response_sums == {"200": 20015.0, "503": 91.0}
    response_counts = {labels["response_code"]: value for labels, value in samples["istio_response_bytes_count"]}
    assert response_counts == {"200": 3.0, "503": 1.0}
    assert samples["istio_tcp_sent_bytes_total"][0][1] == 10.0
    assert samples["istio_tcp_connections_opened_total"][0][0]["request_protocol"] == "tcp"
    assert samples["meshbox_proxy_upstream_rq_retry_total"] == [({}, 2.0)]


def test_an_idle_proxy_exposes_empty_families() -> None:
    text = render([Stats()]).decode()
    assert "# TYPE istio_requests_total counter" in text
    assert _samples(text) == {}
