"""The load test of the erasure API (``scripts/load_test.py``): wrk phases (``wrk``), measuring the server
(``measure``), the targets and the report (``report``)."""
