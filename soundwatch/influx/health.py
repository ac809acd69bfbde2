"""Best-effort ``pipeline`` points of the stages whose data path must never wait for InfluxDB."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from soundwatch.influx.client import InfluxClient
from soundwatch.influx.schema import FieldValue, pipeline_point
from soundwatch.settings import InfluxSettings

log = logging.getLogger(__name__)


class HealthReporter:
    """Writes ``pipeline`` points (tags ``stage``, ``worker``) for the pipeline-health dashboard.

    Used by the gateway and the feature workers: :meth:`report` never raises; a failed write is
    logged once per outage and the next report simply tries again.
    """

    def __init__(self, settings: InfluxSettings, stage: str, worker: str) -> None:
        self.settings = settings
        self.stage = stage
        self.worker = worker
        self._client: InfluxClient | None = None
        self._failing = False
        self.written = 0

    def report(self, fields: Mapping[str, FieldValue]) -> bool:
        """Write one point with ``fields`` now; True when InfluxDB took it."""
        try:
            line = pipeline_point(self.stage, self.worker, fields).to_line()
            if self._client is None:
                self._client = InfluxClient(self.settings)
            self._client.write([line])
        except Exception as exc:  # health is best effort: never let InfluxDB stop the data path
            if not self._failing:
                log.warning("cannot write %s health to InfluxDB (%s); the data path is unaffected", self.stage, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("%s health reaches InfluxDB again", self.stage)
        self._failing = False
        self.written += 1
        return True

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as exc:  # closing an HTTP session cannot matter to the caller
                log.debug("closing the InfluxDB client failed: %s", exc)
