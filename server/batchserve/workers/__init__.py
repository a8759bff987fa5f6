"""``--workers N``: the process entry points, the supervisor (``supervisor.py``) and the worker
(``worker.py``); what they share with a single-process server is in ``batchserve/cluster/``."""
