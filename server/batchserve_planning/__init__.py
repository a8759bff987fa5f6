"""Capacity planning: ``batchserve loadtest``, ``batchserve recommend`` and ``batchserve inspect``.

It depends on the server one way only: nothing in ``batchserve`` imports it (the CLI
registers its commands when it builds its parser). ``load`` is the HTTP client half
(inputs, the load generator and its workers, results, scraping ``/metrics``) and imports
nothing from ``batchserve``. ``loadtest`` is the command around it; ``recommend`` sweeps
configurations (``sweep``, each candidate measured by a load ``ramp``) on servers it
starts itself (``serverproc``) and writes a report (``report``); ``inspection`` (the
``inspect`` command) measures a model's size and activation memory (``modelsize``).
Importing these modules imports neither torch nor matplotlib.
"""
