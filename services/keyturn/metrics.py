"""Serving a worker's Prometheus metrics (the HTTP services serve theirs on ``/metrics``)."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def serve_metrics(service: str, port: int, host: str = "127.0.0.1") -> bool:
    """Serve /metrics on ``port`` (0: not at all); True when serving.

    A port already taken is logged, not fatal: the work matters more than its metrics.
    """
    if not port:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        log.warning("%s metrics not served: port %d on %s is unavailable (%s)", service, port, host, error)
        return False
    log.info("%s metrics on http://%s:%d/metrics", service, host, port)
    return True
