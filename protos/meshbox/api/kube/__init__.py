"""Kubernetes' rules, written once for every component that reads Kubernetes objects.

- ``names``: cluster DNS names, the mesh's and the system namespaces, well-known labels.
- ``objects``: Services, Pods, Endpoints and EndpointSlices parsed into typed facts.
- ``endpoints``: a Service's selector, target ports and readiness → its endpoints.
"""
