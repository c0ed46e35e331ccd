"""Algorithms: pure schedules plus thin drivers over a transport, and the choice between them.

- :mod:`~ringcomm.algorithms.schedule`: who sends which chunk at which step (pure).
- :mod:`~ringcomm.algorithms.context`: :class:`OpContext`, what a driver sees of its
  operation (tags, deadline, reduction).
- drivers: :mod:`~ringcomm.algorithms.ring`, :mod:`~ringcomm.algorithms.recursive_doubling`,
  :mod:`~ringcomm.algorithms.tree`, :mod:`~ringcomm.algorithms.star`,
  :mod:`~ringcomm.algorithms.linear`.
- :mod:`~ringcomm.algorithms.choice`: which one runs, by size (measured there).
- :mod:`~ringcomm.algorithms.records`: text records gathered from every rank.
"""
