"""The outbox dispatcher: sends committed erasure requests to the broker (``service.outbox.dispatch_outbox``).

It runs in one of two places:

- a thread of the API process (the default, and the embedded default's only option): the POST route
  wakes it after each commit;
- its own process, ``python -m service.dispatcher`` (``lethe dispatcher``; the API then runs with
  ``LETHE_DISPATCHER_IN_API=0``): publishing through Celery costs about as much CPU per request as
  the whole POST, so on a busy API it is better off the API's interpreter lock. ``lethe serve`` on
  Postgres and docker-compose run it this way.

On Postgres every transaction that adds outbox rows also issues ``NOTIFY lethe_outbox`` (delivered at
commit), and the dispatcher ``LISTEN``s on its own connection, so a new request is sent at once from
any process; the poll every ``LETHE_OUTBOX_POLL_SECONDS`` remains as the fallback (a lost
notification, a broker that was down). Several dispatchers may run: rows are claimed with
``FOR UPDATE SKIP LOCKED``.

Every ``LETHE_SWEEP_SECONDS`` it also runs ``service.sweep.sweep``: a running request whose worker stopped
writing its heartbeat is queued again (or failed after ``LETHE_MAX_WORKER_LOSSES``), a queued request that
no worker acknowledged is sent again. The sweep lives here because this is the one process that sends: it
adds outbox rows and the same loop sends them at once, and it does not depend on the broker (a Celery beat
would need the broker that may have just lost the messages). After each pass it runs its housekeeping
(``service.housekeeping``: the webhook deliveries that are due, the retention sweep of withdrawn versions).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import make_url

from service.db import OUTBOX_CHANNEL, Database
from service.outbox import DispatchResult, Sender, dispatch_outbox
from service.sweep import SweepPolicy, SweepResult, sweep

logger = logging.getLogger("lethe.service")

PASS_LIMIT = 100
# After a wake-up, wait this long before the pass: under load one pass then sends several requests (one
# transaction, one chain append) instead of one each. A task waits at most this much longer for its worker.
COALESCE_SECONDS = 0.02


class OutboxDispatcher:
    """Runs ``dispatch_outbox`` every ``interval`` seconds, and at once when woken (``wake()``), in a
    thread (``start``/``stop``) or in the caller's thread (``run_forever``, until ``stop``). With
    ``listen`` and a Postgres database, notifications on ``lethe_outbox`` wake it too."""

    def __init__(self, db: Database, sender: Sender, interval: float,
                 on_result: Callable[[DispatchResult], None] | None = None, listen: bool = True,
                 coalesce_seconds: float = COALESCE_SECONDS, sweep_policy: SweepPolicy | None = None,
                 sweep_seconds: float = 10.0, on_sweep: Callable[[SweepResult], None] | None = None,
                 housekeeping: Callable[[], None] | None = None):
        if interval <= 0 or sweep_seconds <= 0:
            raise ValueError("the dispatcher's poll and sweep intervals must be positive")
        self.db, self.sender, self.interval, self.on_result = db, sender, interval, on_result
        self.coalesce_seconds = coalesce_seconds
        self.sweep_policy, self.sweep_seconds, self.on_sweep = sweep_policy, sweep_seconds, on_sweep
        self._next_sweep = 0.0
        self.housekeeping = housekeeping  # webhooks and the retention sweep (service.housekeeping), each pass
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener = PostgresListener(db.url, OUTBOX_CHANNEL, self.wake, self._stop) \
            if listen and make_url(db.url).get_backend_name() == "postgresql" else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="lethe-outbox", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    @property
    def listens(self) -> bool:
        """Whether Postgres notifications wake it (besides ``wake()`` and the poll)."""
        return self._listener is not None

    def stop_soon(self) -> None:
        """Ask it to stop after the current pass (safe in a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        self.stop_soon()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._listener is not None:
            self._listener.join(timeout=5)

    def sweep_once(self) -> SweepResult | None:
        """The sweep (``service.sweep``), in its own transaction; None when this dispatcher does not sweep."""
        if self.sweep_policy is None:
            return None
        with self.db.transaction() as session:
            result = sweep(session, self.sweep_policy)
        if self.on_sweep is not None:
            self.on_sweep(result)
        return result

    def _sweep_if_due(self) -> None:
        if self.sweep_policy is None or time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_seconds
        try:
            self.sweep_once()
        except Exception:
            logger.exception("sweep failed; trying again in %.1f s", self.sweep_seconds)

    def _wait_seconds(self) -> float:
        if self.sweep_policy is None:
            return self.interval
        return max(0.0, min(self.interval, self._next_sweep - time.monotonic()))

    def run_once(self) -> DispatchResult:
        with self.db.session() as session:
            result = dispatch_outbox(session, self.sender, limit=PASS_LIMIT)
        if self.on_result is not None:
            self.on_result(result)
        return result

    def run_forever(self) -> None:
        if self._listener is not None:
            self._listener.start()
        first = True
        while not self._stop.is_set():
            # the first pass sends what was left over from before we started
            woken = not first and self._wake.wait(self._wait_seconds())
            if woken and self.coalesce_seconds > 0:
                self._stop.wait(self.coalesce_seconds)  # let the requests committed meanwhile join the pass
            first = False
            self._wake.clear()  # rows committed after this are seen by the pass below or wake it again
            if self._stop.is_set():
                break
            self._sweep_if_due()  # what it queues again is sent by the pass below
            try:
                while True:
                    result = self.run_once()
                    if result.failed or result.sent + result.skipped < PASS_LIMIT or self._stop.is_set():
                        break
                if self.housekeeping is not None:
                    self.housekeeping()
            except Exception:
                logger.exception("outbox dispatcher pass failed; retrying in %.1f s", self.interval)
                self._stop.wait(self.interval)


class PostgresListener:
    """A thread with its own autocommit connection that ``LISTEN``s on ``channel`` and calls ``on_notify``
    for each notification (and once after every (re)connection, for what it may have missed). It
    reconnects after errors, every few seconds, until ``stop`` is set."""

    def __init__(self, database_url: str, channel: str, on_notify: Callable[[], None], stop: threading.Event,
                 reconnect_seconds: float = 2.0):
        url = make_url(database_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.channel, self.on_notify, self.stop, self.reconnect_seconds = channel, on_notify, stop, reconnect_seconds
        self._thread = threading.Thread(target=self._run, name=f"lethe-listen-{channel}", daemon=True)
        self.listening = threading.Event()  # set while LISTEN is in effect (tests)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg

        while not self.stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {self.channel}")
                    self.listening.set()
                    self.on_notify()
                    while not self.stop.is_set():
                        for _ in connection.notifies(timeout=1.0):
                            self.on_notify()
            except Exception as exc:
                logger.warning("LISTEN %s failed (%s: %s); the poll still runs; reconnecting in %.0f s",
                               self.channel, type(exc).__name__, exc, self.reconnect_seconds)
            finally:
                self.listening.clear()
            self.stop.wait(self.reconnect_seconds)


def main() -> int:
    """``python -m service.dispatcher``: the dispatcher as its own process, configured like the API
    (``LETHE_DATABASE_URL``, ``LETHE_BROKER_URL``, ``LETHE_TASK_QUEUE``, ``LETHE_OUTBOX_POLL_SECONDS``);
    its dispatch counters are exported on ``LETHE_DISPATCHER_METRICS_PORT`` (default 9809; 0: off).
    SIGTERM or Ctrl-C ends it after the current pass."""
    from prometheus_client import CollectorRegistry, start_http_server

    from service.housekeeping import Housekeeping
    from service.metrics import DispatchMetrics, build_info_gauge
    from service.queue import celery_sender, make_celery_client
    from service.settings import get_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    registry = CollectorRegistry()
    metrics = DispatchMetrics(registry)
    build_info_gauge(registry, "dispatcher")
    if settings.dispatcher_metrics_port:
        start_http_server(settings.dispatcher_metrics_port, addr=settings.dispatcher_metrics_addr, registry=registry)
    interval = settings.outbox_poll_seconds if settings.outbox_poll_seconds > 0 else 5.0
    dispatcher = OutboxDispatcher(Database(settings.database_url),
                                  celery_sender(make_celery_client(settings), settings.task_queue), interval,
                                  on_result=metrics.record_dispatch, sweep_policy=SweepPolicy.from_settings(settings),
                                  sweep_seconds=settings.sweep_seconds, on_sweep=metrics.record_sweep,
                                  housekeeping=Housekeeping(Database(settings.database_url), settings))

    def request_stop(signum, _frame):
        logger.info("signal %d: stopping after the current pass", signum)
        dispatcher.stop_soon()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info("outbox dispatcher: database %s, broker %s, poll %.1f s%s", make_url(settings.database_url)
                .render_as_string(hide_password=True), settings.broker_url.split("@")[-1], interval,
                f", LISTEN {OUTBOX_CHANNEL}" if dispatcher.listens else "")
    dispatcher.run_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
