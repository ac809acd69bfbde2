"""The online retraining service: raw-audio archive, confirmed-normal intervals, the scheduled
retrainer, the promotion gate and the ops CLI (``soundwatch normal|models|retrain|archive``).

Offline ML (datasets, methods, ``soundwatch train|evaluate``) is the rest of :mod:`training`.
"""
