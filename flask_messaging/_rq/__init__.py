"""Everything flask-messaging does with RQ, in one package.

This is the only code that imports ``rq`` or ``rq_dashboard``, or relies on
redis-py's internals (an import-linter contract in ``pyproject.toml`` keeps it
so). Every assumption it makes about RQ's internals (a method it overrides, a
private attribute it reads, the commands RQ writes for a job) has a test in
``tests/test_rq_contract.py``, which fails naming the assumption when an RQ
release changes it.
"""
