"""Worker processes behind one port: the supervisor that runs them (``supervisor``) and what
each worker knows of the others (``cluster``)."""
