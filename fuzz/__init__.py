"""A bounded external fuzz of meshbox-proxy (``make fuzz``; proxy/tests/test_fuzz.py runs a small one).

Kept beside the proxy's sources the way h11 keeps its ``fuzz/`` and ``bench/`` beside its package: a
development tool, not part of the distribution. It drives a real ``meshbox-proxy`` process over raw
sockets on 127.0.0.1 with seeded, mutated HTTP/1.1 traffic and a raw-capture backend that sometimes
answers with hostile responses, then judges the run with an oracle (see ``oracle``).

Modules: ``wire`` (request templates and their serialization), ``request_mutators`` (valid variants
and malformed mutations), ``hostile_responses`` (what the backend may answer), ``capture_backend``,
``response_reader`` (a strict parser of what the proxy sends back), ``dialects`` (one per protocol:
HTTP/1.1 today; the extension point for HTTP/2), ``proxy_process``, ``oracle``, ``driver`` and
``__main__`` (the command line).
"""
