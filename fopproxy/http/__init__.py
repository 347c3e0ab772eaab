"""`mode: http`: the request-aware pump between the TLS plaintext side and the backend.

tcp mode relays bytes; http mode parses each request (httptools, i.e. llhttp, plus our own checks
where llhttp is lenient), rewrites the headers the backend must be able to trust, relays requests
one at a time over one reused backend connection, and answers itself (400/431/501/502/504) where
the backend cannot. Modules:

- `request.py`: strict request parsing and the head rewritten for the backend;
- `response.py`: response boundaries (bytes are relayed as the backend sent them);
- `pump.py`: the exchange sequencing, backend connection, backpressure and timeouts;
- `answers.py`: the short responses the proxy makes itself;
- `clientcert.py`: where a verified client certificate comes from, and its RFC 9440 headers;
- `stats.py`: per-request counters and their Prometheus families;
- `accesslog.py`: one log line per request;
- `connection.py`: the glue to the TLS connection of `relay.py`.
"""
