"""The job store contract, written once and run against every store.

``contract_*.py`` hold the tests (module-level, as pytest collects them where they are imported);
a test module runs them with ``from tests.storecontract.contract_X import *`` beside the fixtures
of one store: ``sqlite.py`` (tests/unit) or ``postgres.py`` (tests/integration, needs the
suite's PostgreSQL server), imported as ``sqlite_make_store``/``pg_make_store`` and so on (the
fixture names are the same). Those give

- ``make_store(**kwargs)``: a store on this test's one database (each call opens it again:
  "reopening"); ``log_limit``/``line_limit`` as the stores take them, ``new_key=True`` opens it
  with another sealing key. Every store made is closed after the test.
- ``raw``: the database as stored, beneath the store: ``stored()`` (bytes: every file, or every
  row), ``requests()`` (the stored request texts), ``edit_requests(change)``.
"""
