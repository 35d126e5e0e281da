"""PgStore against the JobStore contract: the tests SqliteStore passes (tests/storecontract/),
on a real PostgreSQL (tests/integration/pgserver.py), a fresh database per test."""

from tests.storecontract.contract_metrics import test_the_store_feeds_render  # noqa: F401
from tests.storecontract.contract_props import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.contract_store import *  # noqa: F403
from tests.storecontract.postgres import pg_make_store, pg_raw  # noqa: F401 - the contract's fixtures
