"""The worker's sign of life: a thread that renews a lease while the work runs, through silent stages too
(training a tokenizer, loading a large base, merging), so the reaper never takes live work for lost."""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from backend.config import get_settings
from backend.db import session_scope
from backend.work import lease
from backend.work.lease import Lease, LeaseLost
from backend.work.retry import transient

log = logging.getLogger(__name__)


@contextmanager
def heartbeat(held: Lease) -> Iterator[threading.Event]:
    """Hold `held` in this process and renew it every `heartbeat_seconds` while the body runs. The event yielded
    is set once the lease is lost (taken over): the work should stop, and its writes are refused anyway."""
    lost = threading.Event()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(get_settings().heartbeat_seconds):
            try:
                with session_scope() as s:
                    lease.renew(s, held)
            except LeaseLost:
                log.warning("%s lost its lease; stopping", held)
                lost.set()
                return
            except Exception as exc:  # a database blip: the lease is minutes long, the next beat may land
                level = logging.INFO if transient(exc) else logging.WARNING
                log.log(level, "lease renewal of %s failed: %s", held, exc)
                if lease.overdue(held):
                    log.warning("%s could not renew its lease for most of it; stopping", held)
                    lost.set()
                    return

    thread = threading.Thread(target=beat, name=f"lease-{held.kind.name}-{held.id}", daemon=True)
    with lease.holding(held):
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()
