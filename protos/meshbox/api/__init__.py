"""meshbox's shared config model.

- ``meshbox.api.v1``: messages generated from protos/meshbox/api/v1/*.proto
  (MeshConfig, the proxy config resources, RouteRuleSpec, the discovery service).
- ``meshbox.api.loader``: YAML/JSON documents → those messages, with errors naming the bad field.
- ``meshbox.api.defaults``: the defaults every component applies to a MeshConfig.
- ``meshbox.api.kube``: Kubernetes' rules (names, object parsing, selector → endpoints).
- ``meshbox.api.files`` / ``meshbox.api.commands``: atomic file replacement, running a system tool.
"""
