"""Istio HTTPRoute actions translated into meshbox's RouteRuleSpec: headers (route and destination),
rewrite, redirect, mirror / mirrorPercentage / mirrors, in every served version; what stays refused
is named; bad values are MB0100 findings."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.istio.legacy import translate_legacy_route_rule
from meshbox.api.istio.virtual_service import translate_virtual_service
from meshbox.api.loader import ConfigError, parse_route_rule
from meshbox.api.validation import ValidationError

ACTIONS = """
apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /legacy}}}}]
    redirect: {{uri: /v2, authority: new.example, scheme: https, port: 8443, redirectCode: 308}}
  - match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /, authority: reviews.internal}}
    headers:
      request: {{set: {{X-Version: v1}}, add: {{x-trace: "on"}}, remove: [cookie]}}
      response: {{remove: [server]}}
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: 80
      headers: {{response: {{set: {{x-subset: v1}}}}}}
    - destination: {{host: ratings, port: {{number: 9080}}}}
      weight: 20
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    mirror: {{host: reviews, subset: v2}}
    mirrorPercentage: {{value: 50.5}}
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    mirrors:
    - destination: {{host: ratings, subset: v2}}
    - destination: {{host: reviews, subset: v3}}
      percentage: {{value: 10}}
"""


def load(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_actions_translated_in_every_served_version(version: str) -> None:
    vs, findings = translate_virtual_service(load(ACTIONS.format(version=version)), source="a.yaml")
    assert findings == [] and vs is not None
    redirect, api, mirror, mirrors = (rule.spec for rule in vs.rules)
    r = redirect.redirect
    assert (r.path, r.authority, r.scheme, r.port, r.code) == ("/v2", "new.example", "https", 8443, 308)
    assert not redirect.route
    assert (api.rewrite.prefix, api.rewrite.authority) == ("/", "reviews.internal")
    assert [(h.name, h.value) for h in api.request_headers.set] == [("x-version", "v1")]
    assert [(h.name, h.value) for h in api.request_headers.add] == [("x-trace", "on")]
    assert list(api.request_headers.remove) == ["cookie"] and list(api.response_headers.remove) == ["server"]
    assert [(d.subset, d.host, [(h.name, h.value) for h in d.response_headers.set]) for d in api.route] == [
        ("v1", "", [("x-subset", "v1")]), ("", "ratings.default.svc.cluster.local", [])]
    assert [(m.destination.subset, m.destination.host, m.percent, m.all) for m in mirror.mirrors] == [
        ("v2", "", 50.5, False)]
    assert [(m.destination.subset, m.destination.host, m.percent, m.all) for m in mirrors.mirrors] == [
        ("v2", "ratings.default.svc.cluster.local", 0.0, True), ("v3", "", 10.0, False)]
    assert vs.rules[3].mirror_paths == ("spec.http[3].mirrors[0].destination", "spec.http[3].mirrors[1].destination")


@pytest.mark.parametrize(("http", "expected"), [
    ({"rewrite": {"uriRegexRewrite": {"match": "^/a(.*)", "rewrite": "/b\\2"}}},
     [("MB0100", "spec.http[0].rewrite.uriRegexRewrite", "'/b\\\\2': invalid group reference 2 at position 3 "
                                                         "('^/a(.*)' has 1 groups)")]),
    ({"rewrite": {"uriRegexRewrite": {"match": "^/a(", "rewrite": "/b"}}},
     [("MB0100", "spec.http[0].rewrite.uriRegexRewrite",
       "not a regular expression: missing ), unterminated subpattern at position 3")]),
    ({"redirect": {"derivePort": "FROM_REQUEST_PORT"}, "route": None},
     [("MB0105", "spec.http[0].redirect.derivePort", "not implemented by meshbox's proxy yet")]),
    ({"redirect": {"uri": "/x"}},
     [("MB0100", "spec.http[0].redirect", "a route has either destinations (route) or a redirect, not both")]),
    ({"redirect": {"uri": "/x", "redirectCode": 305}, "route": None},
     [("MB0100", "spec.http[0].redirect.redirectCode", "one of 301, 302, 303, 307, 308, got 305")]),
    ({"headers": {"request": {"set": {"content-length": "0"}}}},
     [("MB0100", "spec.http[0].headers.request.set.content-length",
       "cannot edit header 'content-length' (the proxy frames messages itself; use rewrite.authority for Host)")]),
    ({"headers": {"response": {"add": {"x-a": 5}}}},
     [("MB0100", "spec.http[0].headers.response.add.x-a", "expected a string, got 5")]),
    ({"mirrorPercentage": {"value": 5}}, [("MB0100", "spec.http[0].mirrorPercentage", "needs mirror")]),
    ({"mirror": {"host": "reviews"}, "mirrorPercentage": {"value": 101}},
     [("MB0100", "spec.http[0].mirrorPercentage.value", "expected a number 0..100, got 101")]),
])
def test_refused_and_invalid_actions_are_named(http: dict[str, Any], expected: list[tuple[str, str, str]]) -> None:
    route = {"route": [{"destination": {"host": "reviews"}}], **http}
    route = {k: v for k, v in route.items() if v is not None}
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "default"},
           "spec": {"hosts": ["reviews"], "http": [route]}}
    vs, findings = translate_virtual_service(doc, source="x.yaml")
    assert vs is None
    assert [(f.code.id, f.path, f.message) for f in findings] == expected


def test_route_rule_actions_are_validated() -> None:
    rule = {"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": "r"}, "spec": {"destination": "reviews",
                                                "rateLimit": {"maxTokens": 10, "fillInterval": "1s"}}}
    _, _, spec = parse_route_rule(rule)
    assert (spec.rate_limit.max_tokens, spec.rate_limit.fill_interval.seconds) == (10, 1)
    rule["spec"]["rateLimit"] = {"maxTokens": 0, "fillInterval": "1s"}
    with pytest.raises((ConfigError, ValidationError), match=r"spec.rate_limit.max_tokens: must be at least 1"):
        parse_route_rule(rule)
    rule["spec"] = {"destination": "reviews", "requestHeaders": {"set": [{"name": "host", "value": "x"}]}}
    with pytest.raises((ConfigError, ValidationError), match=r"spec.request_headers.set\[0\].name: cannot edit"):
        parse_route_rule(rule)


def test_seed_era_route_rule_actions() -> None:
    rule, findings = translate_legacy_route_rule(load("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-shadow}
spec:
  destination: {name: reviews}
  route: [{labels: {version: v1}}]
  rewrite: {uri: /v1, authority: reviews.internal}
  appendHeaders: {x-istio: v1alpha2}
  mirror: {name: reviews, labels: {version: v2}}
"""), source="r.yaml")
    assert findings == [] and rule is not None
    spec = rule.spec
    assert (spec.rewrite.prefix, spec.rewrite.authority) == ("/v1", "reviews.internal")
    assert [(h.name, h.value) for h in spec.request_headers.add] == [("x-istio", "v1alpha2")]
    assert [(dict(m.destination.labels), m.all) for m in spec.mirrors] == [({"version": "v2"}, True)]
    redirect, findings = translate_legacy_route_rule(load("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: moved}
spec:
  destination: {name: reviews}
  redirect: {uri: /moved, authority: other.example}
  mirror: {name: ratings}
"""), source="r.yaml")
    assert redirect is None
    assert [(f.path, f.message) for f in findings] == [
        ("spec.mirror", "mirroring to another service than the destination: not implemented by meshbox yet")]


def test_uri_regex_rewrite() -> None:
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "default"},
           "spec": {"hosts": ["reviews"], "http": [{
               "rewrite": {"uriRegexRewrite": {"match": "^/service/([^/]+)(/.*)$", "rewrite": "\\2/instance/\\1"}},
               "route": [{"destination": {"host": "reviews"}}]}]}}
    vs, findings = translate_virtual_service(doc, source="x.yaml")
    assert findings == [] and vs is not None
    rewrite = vs.rules[0].spec.rewrite
    assert (rewrite.regex, rewrite.regex_substitution) == ("^/service/([^/]+)(/.*)$", "\\2/instance/\\1")


def test_deprecated_v1alpha3_header_fields() -> None:
    doc = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "default"},
           "spec": {"hosts": ["reviews"], "http": [{
               "appendHeaders": {"x-a": "1"}, "appendRequestHeaders": {"x-b": "2"},
               "appendResponseHeaders": {"x-c": "3"}, "removeRequestHeaders": ["cookie"],
               "removeResponseHeaders": ["server"], "route": [{"destination": {"host": "reviews"}}]}]}}
    vs, findings = translate_virtual_service(doc, source="x.yaml")
    assert findings == [] and vs is not None
    spec = vs.rules[0].spec
    assert [(h.name, h.value) for h in spec.request_headers.add] == [("x-a", "1"), ("x-b", "2")]
    assert [(h.name, h.value) for h in spec.response_headers.add] == [("x-c", "3")]
    assert (list(spec.request_headers.remove), list(spec.response_headers.remove)) == (["cookie"], ["server"])
    doc["spec"]["http"][0]["appendHeaders"] = {"content-length": "1"}
    doc["spec"]["http"][0]["removeRequestHeaders"] = ["bad name"]
    _, findings = translate_virtual_service(doc, source="x.yaml")
    assert [(f.path, f.message) for f in findings] == [
        ("spec.http[0].appendHeaders.content-length", "cannot edit header 'content-length' (the proxy frames "
                                                      "messages itself; use rewrite.authority for Host)"),
        ("spec.http[0].removeRequestHeaders[0]", "not a header name: 'bad name'"),
    ]
