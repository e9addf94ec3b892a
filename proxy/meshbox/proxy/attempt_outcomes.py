"""What the exchange core reports about an upstream attempt, and the request body it keeps for a
retry or a mirror copy: constants only.

They live apart from retry_policy, outlier_detection and route_actions so that the always-loaded
exchange core can name them without loading those modules, which a proxy imports only when its config
has a retry policy, outlier detection or route actions (a pickled snapshot that holds such objects
imports their module when it is unpickled).
"""

from __future__ import annotations

from typing import Final

# What went wrong with an attempt, as bits a retry policy retries.
CONNECT_FAILURE: Final = 1
# The connection closed or reset before the response head.
RESET: Final = 2
# The per-try timeout expired before the response head.
TRY_TIMEOUT: Final = 4
# HTTP/2 REFUSED_STREAM (the upstream did not process the request): reported by an HTTP/2 upstream.
REFUSED_STREAM: Final = 128
# An attempt that got no answer (failed connect, reset, timeout) counts as this status for outlier
# detection, as Envoy counts local-origin errors when it does not split them out.
NO_ANSWER: Final = 503
# Request body kept per request to send again on a retry; a longer body is not retried.
RETRY_BODY_LIMIT: Final = 64 * 1024
# A mirror copies request bodies up to this size (held while the body arrives); larger ones are not copied.
MIRROR_BODY_LIMIT: Final = 64 * 1024
