"""The model contract: what training writes and scoring reads (neither imports the other).

* :mod:`soundwatch.model.registry` — versioned artifacts on disk, their typed metadata, the current
  version per machine type in Redis and the reload channel a promotion is announced on.
* :mod:`soundwatch.model.scorer` — the ONE window -> anomaly-score function.
* :mod:`soundwatch.model.filters` — the median filter and the clip score shared by stream and evaluation.
* :mod:`soundwatch.model.device` — device, precision (autocast) and seeding.
* :mod:`soundwatch.model.networks` — the networks an artifact is rebuilt from.
"""
