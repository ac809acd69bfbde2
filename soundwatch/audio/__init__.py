"""The audio front end every stage shares: reading files, the log-mel transform, offline windows.

The feature stream (``features/``) computes windows online with these functions; training and
evaluation compute the same windows offline; the ingest file source reads audio the same way.
"""
