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

import logging
import time
from typing import Any

from ingest.producer import ShipperStats
from soundwatch.settings import Settings

log = logging.getLogger(__name__)

MEASUREMENT = "pipeline"
STAGE = "ingest"


class HealthReporter:
    """Writes one ``pipeline`` point per :meth:`report` call; never raises."""

    def __init__(self, settings: Settings, gateway_id: str) -> None:
        self.settings = settings
        self.gateway_id = gateway_id
        self._writer: Any = None  # scoring.influx.LineWriter, made on first use
        self._failing = False
        self.written = 0

    def report(self, chunks_per_s: float, sent_per_s: float, st: ShipperStats) -> bool:
        """Write the current numbers; True when InfluxDB took them."""
        from scoring.influx import Point, make_writer

        sp = st.spool
        point = Point(
            MEASUREMENT,
            {"stage": STAGE, "worker": self.gateway_id},
            {
                "chunks_per_s": float(chunks_per_s),
                "sent_chunks_per_s": float(sent_per_s),
                "buffer_points": int(sp.pending_chunks),
                "spool_bytes": int(sp.pending_bytes),
                "spool_oldest_s": float(sp.oldest_age_s),
                "dropped_chunks": int(sp.dropped_chunks),
                "online": bool(st.online),
            },
            time.time_ns(),
        )
        try:
            if self._writer is None:
                self._writer = make_writer(self.settings.influx)
            self._writer.write([point.to_line()])
        except Exception as exc:  # health is best effort: never let InfluxDB stop the audio
            if not self._failing:
                log.warning("cannot write gateway health to InfluxDB (%s); the audio path is unaffected", exc)
            self._failing = True
            return False
        if self._failing:
            log.info("gateway health reaches InfluxDB again")
        self._failing = False
        self.written += 1
        return True

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:  # closing an HTTP session cannot matter to the caller
                log.debug("closing the InfluxDB writer failed: %s", exc)
