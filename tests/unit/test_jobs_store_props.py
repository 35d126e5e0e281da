"""SqliteStore's log and request properties: the contract (tests/storecontract/contract_props.py,
shared with PgStore)."""

from tests.storecontract.contract_props import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.sqlite import sqlite_make_store, sqlite_raw  # noqa: F401 - the contract's fixtures
