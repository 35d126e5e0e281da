"""SqliteStore used from many threads at once: the contract (tests/storecontract/contract_races.py,
shared with PgStore)."""

from tests.storecontract.contract_races import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.sqlite import sqlite_make_store, sqlite_raw  # noqa: F401 - the contract's fixtures
