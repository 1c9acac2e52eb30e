"""Docker HEALTHCHECK of a worker container: exit 0 when the broker and the database both answer.

Cheap on purpose (no torch import, one connection each): it runs every 30 s beside a training job.
"""

import sys

from kombu import Connection
from sqlalchemy import create_engine, text

from backend.config import get_settings


def main() -> int:
    settings = get_settings()
    try:
        with Connection(settings.broker_url, connect_timeout=5) as broker:
            broker.ensure_connection(max_retries=1)
        engine = create_engine(settings.database_url, pool_pre_ping=False)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure is unhealthy; say which for `docker inspect`
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
