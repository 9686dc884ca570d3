"""Agent programs run as subprocesses by the reliability tests (``sys.executable -m …``)."""
