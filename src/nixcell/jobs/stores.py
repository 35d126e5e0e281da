"""Which job store a daemon opens: ``[server] store`` / ``serve --store`` (docs/scale-out.md).

No store named: SQLite in the state dir (one host). ``sqlite:/PATH``: SQLite there.
``postgresql://...``: the store many hosts share; psycopg is imported only then, and the
sealing key is ``store_key`` (the same file on every host: a job's secret env values are sealed
by the host that took the submit and unsealed by the one that runs it).
"""

from __future__ import annotations

import os

from nixcell.jobs.config import ServerConfig, is_postgres
from nixcell.jobs.store import JobStore


def open_store(config: ServerConfig) -> JobStore:
    store = config.store
    if is_postgres(store):
        from nixcell.jobs.dbfile import load_key
        from nixcell.jobs.pgstore import PgStore

        assert config.store_key is not None  # load_config refuses a postgresql store without
        return PgStore(
            str(store),
            log_limit=config.log_limit,
            key=load_key(config.store_key),
            host=config.host_name,
        )
    from nixcell.jobs.sqlite import SqliteStore

    path = store[len("sqlite:") :] if store else os.path.join(config.state_dir, "jobs.db")
    return SqliteStore(path, log_limit=config.log_limit)
