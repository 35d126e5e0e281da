"""PgStore used from many threads at once: the contract SqliteStore passes
(tests/storecontract/contract_races.py), on a real PostgreSQL."""

from tests.storecontract.contract_races import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.postgres import pg_make_store, pg_raw  # noqa: F401 - the contract's fixtures
