"""Rank bodies: code that runs on every rank of a multi-rank test.

- :mod:`ranks.collectives`: functions ``f(comm)`` run by :func:`runners.run_threads`
  (thread ranks) and :class:`runners.RankPool` (process ranks), and by ``ranks/mpi.py``.
- ``ranks/shm.py``, ``ranks/faults.py``, ``ranks/pytorch.py``, ``ranks/mpi.py``: scripts
  run as ``python tests/ranks/X.py MODE`` on every rank (by ``ringcomm-run``,
  :func:`runners.run_script_ranks` or ``mpiexec``); a rank that passes prints
  ``PASS rank <r> MODE``.
"""
