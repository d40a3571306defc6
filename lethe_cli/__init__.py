"""The ``lethe`` command line, the demo and ``serve``: a thin layer over the library (``ease_engine``),
the service (``service``) and the workers (``workers``), the only package that may import all three.
Heavy imports (torch, the engine) happen inside the commands, so ``lethe token ...`` and ``lethe db ...``
also work where only the service is installed."""
