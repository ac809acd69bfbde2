"""The gateway's health in InfluxDB, for the pipeline dashboard (``pipeline`` measurement, ``stage=ingest``).

Best effort by design: the audio path never waits for InfluxDB. A failed write is logged
(once per outage, at WARNING) and the next report simply tries again.

Fields (tags ``stage=ingest``, ``worker=<gateway id>``): ``chunks_per_s`` (chunks built per
second), ``sent_chunks_per_s`` (acknowledged by Kafka per second), ``buffer_points`` (chunks
waiting in the spool, int, the same field the other stages use for their buffers),
``spool_bytes``, ``spool_oldest_s``, ``dropped_chunks`` (int, since the gateway started) and
``online`` (bool).
"""

from __future__ import annotations

from ingest.producer import ShipperStats
from soundwatch.influx.health import HealthReporter
from soundwatch.settings import Settings

STAGE = "ingest"


class GatewayHealth:
    """Writes the gateway's ``pipeline`` point per :meth:`report` call; never raises."""

    def __init__(self, settings: Settings, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self._reporter = HealthReporter(settings.influx, STAGE, gateway_id)

    @property
    def written(self) -> int:
        return self._reporter.written

    def report(self, chunks_per_s: float, sent_per_s: float, st: ShipperStats) -> bool:
        """Write the current numbers; True when InfluxDB took them."""
        sp = st.spool
        return self._reporter.report(
            {
                "chunks_per_s": float(chunks_per_s),
                "sent_chunks_per_s": float(sent_per_s),
                "buffer_points": int(sp.pending_chunks),
                "spool_bytes": int(sp.pending_bytes),
                "spool_oldest_s": float(sp.oldest_age_s),
                "dropped_chunks": int(sp.dropped_chunks),
                "online": bool(st.online),
            }
        )

    def close(self) -> None:
        self._reporter.close()
