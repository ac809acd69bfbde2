"""Ingest: gateways that publish machine audio to Kafka and never lose it (see README.md in this folder)."""
