#!/usr/bin/env python3
"""Scale-out of the erasure workers: 1, 2 and 4 stand-in workers on one Redis (started here on its own port),
erasures of several models at once, through the real API, outbox dispatcher (with its sweep), Celery workers,
claims, model locks, signing and publication; only the engine is a stand-in that spends a fixed time per stage
(``tests/faults/standin_worker.py``). Prints, and writes as JSON, per worker count: requests per hour per
worker, the peak number of jobs running at once, overlaps of two jobs of one model (must be 0), requests
processed twice (must be 0).

    PYTHONPATH=. python scripts/scale_out.py --workers 1 2 4 --models 4 --per-model 3 --stage-seconds 2 \\
        --json docs/results/scale_out.json

Needs the test Postgres (LETHE_TEST_POSTGRES_URL, default postgresql+psycopg://postgres@127.0.0.1:5432/test)
and redis-server on the PATH. It reuses the fault suite's cluster (tests/faults/cluster.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.db import Database  # noqa: E402
from tests.db_helpers import temporary_schemas  # noqa: E402
from tests.faults.cluster import Cluster, RedisServer  # noqa: E402
from tests.faults.scale import run_scale  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--per-model", type=int, default=3)
    parser.add_argument("--stage-seconds", type=float, default=2.0, help="stand-in time per engine stage (x4)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lethe-scale-"))
    runs = []
    with temporary_schemas("lethe_scale") as make:
        url = make()
        database = Database(url)
        server = RedisServer(root / "redis")
        server.start()
        try:
            for workers in args.workers:
                cluster = Cluster(root / f"w{workers}", url, database, server)
                try:
                    run = run_scale(cluster, workers, args.models, args.per_model, args.stage_seconds)
                finally:
                    cluster.stop()
                runs.append(run)
                print(f"{workers} worker(s): {run.requests} requests of {run.models} models in "
                      f"{run.wall_seconds:.1f} s = {run.requests_per_hour_per_worker:.0f} requests/hour/worker; "
                      f"peak {run.max_parallel} at once; overlaps within a model {run.overlaps_within_a_model}; "
                      f"processed twice {run.processed_twice}", flush=True)
        finally:
            server.kill()
            database.dispose()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "engine": "stand-in (tests/faults/standin_worker.py), fixed time per stage",
            "stage_seconds": args.stage_seconds, "job_engine_seconds": 4 * args.stage_seconds,
            "models": args.models, "requests_per_model": args.per_model,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "command": "PYTHONPATH=. python scripts/scale_out.py " + " ".join(sys.argv[1:]),
            "runs": [{**asdict(run), "requests_per_hour_per_worker": round(run.requests_per_hour_per_worker, 1)}
                     for run in runs]}, indent=2) + "\n")
    return 0 if all(run.overlaps_within_a_model == 0 and run.processed_twice == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
