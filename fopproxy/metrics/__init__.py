"""Prometheus exposition and the health endpoints, read from plain counters at scrape time.

By job, one module each:
- `snapshot`: `MetricsSnapshot`, what one scrape shows, how a worker takes it, its JSON form;
- `collector`: the Prometheus collector that turns a snapshot into the public metric families;
- `http`: the asyncio HTTP listener (/metrics, /healthz, /readyz) with its caps and deadlines;
- `aggregate`: `workers: N`, snapshots over Unix sockets summed by the supervisor;
- `serve`: where the listener runs (a worker's loop, or the supervisor's metrics thread).

This package imports nothing from the process wiring (`fopproxy.process`); it is given a worker.
"""
