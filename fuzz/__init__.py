"""A bounded external fuzz of meshbox-proxy (``make fuzz``; proxy/tests/test_fuzz.py runs a small one).

Kept beside the proxy's sources the way h11 keeps its ``fuzz/`` and ``bench/`` beside its package: a
development tool, not part of the distribution. It drives a real ``meshbox-proxy`` process over raw
sockets on 127.0.0.1 with seeded, mutated HTTP/1.1 and HTTP/2 (h2c) traffic and a capture backend
that sometimes answers with hostile responses, then judges the run with an oracle (see ``oracle``).

Modules: ``dialects`` (one per protocol), ``proxy_process``, ``capture_backend``, ``oracle``,
``known_bugs`` (proxy bugs on record), ``driver``, ``minimize`` and ``__main__`` (the command line).
HTTP/1.1: ``http1_dialect``, ``wire`` (request templates), ``request_mutators``, ``hostile_responses``,
``response_reader`` (a strict parser of what the proxy sends back). HTTP/2: ``h2_dialect``,
``h2_frames`` (frames and HPACK by hand, and a frame reader), ``h2_requests`` (valid streams),
``h2_mutators``, ``h2_client`` (what the proxy sent, per stream), ``h2_rules`` (RFC 9113 message
rules), ``h2_capture`` and ``hostile_h2`` (the backend's HTTP/2 side), ``h2_regressions`` (the corpus).
"""
