"""Capacity planning: ``batchserve loadtest``, ``batchserve recommend`` and ``batchserve inspect``.

``loadgen`` drives a running server (closed loop or Poisson arrivals) over a lean
HTTP/1.1 client (``client``); ``loadtest`` is the command around it; ``recommend``
sweeps configurations (``sweep``) on servers it starts itself (``serverproc``) and
writes a report (``report``); ``inspect`` measures a model's size and activation
memory (``modelsize``). Importing these modules imports neither torch nor matplotlib.
"""
