"""Features: the one log-mel front end (offline and streaming) and the Faust app that windows audio.

* :mod:`soundwatch.audio.audio_io` — read audio files (mono, resampled) the one way every stage does.
* :mod:`soundwatch.audio.logmel` — ``log_mel`` (librosa-equal, vectorised) and ``complete_frames``.
* :mod:`soundwatch.audio.windows` — ``offline_windows``: the windows the stream emits, computed offline.
* :mod:`features.windower` — ``StreamWindower``: per-machine incremental windows (pure, no Kafka).
* :mod:`features.app` — the Faust app; :mod:`features.cli` — ``soundwatch features ...``.
"""
