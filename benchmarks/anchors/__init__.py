"""The anchors' apps for the concurrency benchmark, one module per system.

Each runs the jobs of :mod:`benchmarks.stamps` and needs the ``bench`` extra
(Dramatiq, Celery); RQ runs those functions by name and needs no module here.
"""
