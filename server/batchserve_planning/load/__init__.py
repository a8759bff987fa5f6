"""The HTTP client half of capacity planning: it drives a running server and imports nothing
from ``batchserve`` (a load generator can run on a machine without the server's dependencies).

``inputs`` builds requests from sample files; ``generator`` runs them (closed loop or
Poisson arrivals) in one or more processes of ``worker``, over ``client`` connections;
``shared`` is what the generator and its workers share (the spec, the records, the
shared-memory slots); ``results`` turns records into figures; ``scrape`` reads a server's
``/readyz``, ``/models`` and ``/metrics``; ``measure`` is one run with a progress bar
(``progress``) and the mean batch size from ``/metrics``.
"""
