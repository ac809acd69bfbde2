"""soundwatch: continuous acoustic anomaly monitoring for plant machines.

This package holds only what every stage shares: settings, message contracts,
feature parameters, errors and the CLI entry point. Stage logic lives in the
top-level packages ``ingest``, ``features``, ``scoring``, ``training`` and
``dashboards``.
"""

__version__ = "0.1.0"
