"""The InfluxDB contract: one home for the schema, the HTTP client and the writers built on it.

* :mod:`soundwatch.influx.schema` — measurement, tag and field names, :class:`~soundwatch.influx.schema.Point`,
  line-protocol encoding and the point builders every stage uses;
* :mod:`soundwatch.influx.client` — :class:`~soundwatch.influx.client.InfluxClient`: the one writer
  (``/write`` on 1.x, ``/api/v2/write`` on 2.x/3.x) and the one InfluxQL query client (``/query``,
  which 1.x, 2.x and 3.x all serve). Credentials travel only in the ``Authorization`` header
  (Basic for 1.x, Token for 2.x/3.x), never in a URL;
* :mod:`soundwatch.influx.sink` — :class:`~soundwatch.influx.sink.BufferedSink`, the bounded, retrying
  buffer with back-pressure the scoring worker writes through;
* :mod:`soundwatch.influx.health` — :class:`~soundwatch.influx.health.HealthReporter`, best-effort
  ``pipeline`` points of the gateway and the feature workers.

Points are idempotent: InfluxDB identifies a point by measurement + tag set + timestamp, so writing
the same point twice (a replay after a crash) overwrites it. This is what makes at-least-once
delivery safe.
"""
