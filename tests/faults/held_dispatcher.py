"""``python -m service.dispatcher`` that, after sending a request to the broker and before committing that it
was sent, writes ``$FAULT_MARKERS/dispatcher-sent`` and waits to be killed (the fault suite's "dispatcher dies
between send and commit")."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if __name__ == "__main__":
    from service import lifecycle, outbox
    from service.dispatcher import main

    real = lifecycle.mark_queued_by_ids

    def hold_before_commit(session, requests):
        if requests:
            markers = Path(os.environ["FAULT_MARKERS"])
            markers.mkdir(parents=True, exist_ok=True)
            (markers / f"dispatcher-sent-{os.getpid()}").write_text(str(time.time()))
            while True:
                time.sleep(3600)
        return real(session, requests)

    outbox.lifecycle.mark_queued_by_ids = hold_before_commit
    raise SystemExit(main())
