"""Prometheus metrics of a scoring worker, served on loopback, with the health endpoints on the same port.

Each worker gets its own :class:`~prometheus_client.CollectorRegistry`, so
several workers (or tests) in one process never collide. ``port=0`` binds a
free port chosen by the OS (read it back from :attr:`ScoringMetrics.port`);
metrics cannot be switched off, because a worker nobody can observe is a
worker nobody can trust. Names follow Prometheus conventions: base units (``_seconds``), counters
exposed as ``_total``. ``/healthz`` and ``/readyz`` (:mod:`soundwatch.liveness`) share the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

HealthRoute = Callable[[str], "tuple[int, bytes] | None"]  # path -> (status, JSON body), None: not a health path

log = logging.getLogger(__name__)


class ScoringMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.windows = Counter(
            "soundwatch_scoring_windows_total", "windows scored (rate() = windows/s)", ["machine_type"], registry=r
        )
        self.windows_per_s = Gauge(
            "soundwatch_scoring_windows_per_second",
            "windows scored per second over the last report interval",
            registry=r,
        )
        self.batch_size = Histogram(
            "soundwatch_scoring_batch_size",
            "windows per micro-batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "soundwatch_scoring_inference_seconds",
            "model forward time per micro-batch",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.consumer_lag = Gauge(
            "soundwatch_scoring_consumer_lag", "records behind the partition end", ["partition"], registry=r
        )
        self.write_errors = Counter(
            "soundwatch_scoring_influx_write_errors_total", "failed InfluxDB write requests", registry=r
        )
        self.rejected_points = Counter(
            "soundwatch_scoring_influx_rejected_points_total",
            "points InfluxDB refused as malformed (dropped)",
            registry=r,
        )
        self.buffer_points = Gauge("soundwatch_scoring_buffer_points", "points waiting for InfluxDB", registry=r)
        self.dead_letters = Counter(
            "soundwatch_scoring_dead_letters_total", "records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.alerts = Counter("soundwatch_scoring_alert_events_total", "alert state changes", ["current"], registry=r)
        self.paused = Gauge("soundwatch_scoring_paused", "1 while consumption is paused by back-pressure", registry=r)
        self.model_reloads = Counter("soundwatch_scoring_model_reloads_total", "hot model swaps", registry=r)
        self.stale_machines = Gauge(
            "soundwatch_scoring_stale_machines",
            "known machines of this worker's partitions without audio for stale_after_s",
            registry=r,
        )
        self.port: int | None = None
        self._server: Any = None

    def serve(self, host: str, port: int, health: HealthRoute | None = None) -> int:
        """Start the HTTP endpoint (``/metrics``, and ``health``'s paths); return the bound port."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            answer = health(environ.get("PATH_INFO", "")) if health is not None else None
            if answer is None:
                return metrics_app(environ, start_response)
            status, body = answer
            reason = {200: "OK", 503: "Service Unavailable"}.get(status, "")
            start_response(f"{status} {reason}", [("Content-Type", "application/json")])
            return [body]

        class Server(ThreadingWSGIServer):
            pass

        Server.address_family, addr = _get_best_family(host, port)  # IPv4 or IPv6, as prometheus_client does
        server = make_server(addr, port, app, Server, handler_class=_SilentHandler)
        threading.Thread(target=server.serve_forever, name="scoring-metrics", daemon=True).start()
        self._server = server
        self.port = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
