"""What a server of several worker processes shares with a single-process one: the run directory
(``rundir.py``), each worker's status file (``status.py``), cores (``cores.py``), the models management
changed (``desired.py``), and management fanned out to every worker (``fanout.py``, ``peers.py``)."""
