"""meshbox's shared config model.

- ``meshbox.api.v1``: messages generated from protos/meshbox/api/v1/*.proto
  (MeshConfig, the proxy config resources, RouteRuleSpec, the discovery service).
- ``meshbox.api.loader``: YAML/JSON documents → those messages, with errors naming the bad field.
- ``meshbox.api.defaults``: the defaults every component applies to a MeshConfig.
- ``meshbox.api.kube``: Kubernetes' rules (names, object parsing, selector → endpoints).
- ``meshbox.api.istio``: Istio's traffic API (VirtualService, DestinationRule, ServiceEntry, and the
  v1alpha2 RouteRule/DestinationPolicy) → RouteRuleSpec/DestinationPolicySpec, with coded findings.
- ``meshbox.api.protocols``: the Service port naming rule (http*/grpc* at L7).
- ``meshbox.api.files`` / ``meshbox.api.commands``: atomic file replacement, running a system tool.
"""
