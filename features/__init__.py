"""Features: the Faust app that turns audio chunks into per-machine log-mel windows.

* :mod:`features.windower` — ``StreamWindower``: per-machine incremental windows (pure, no Kafka).
* :mod:`features.app` — the Faust app; :mod:`features.cli` — ``soundwatch features ...``.

The log-mel transform, file reading and the offline windows are shared with training and the file
source, so they live in the core: :mod:`soundwatch.audio`.
"""
