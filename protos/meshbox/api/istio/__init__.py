"""Istio's traffic API (networking.istio.io VirtualService, DestinationRule, ServiceEntry) → meshbox's model.

Shared by discovery (which serves the result) and `meshctl analyze` (which reports the findings):
- ``objects``: which documents are Istio networking objects, host qualification;
- ``virtual_service``, ``destination_rule``, ``service_entry``: one object → model messages + findings;
- ``references``: conflicts and references across objects and the known hosts;
- ``findings``: the stable finding codes.
"""
