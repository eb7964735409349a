"""Shared fixtures: the database backends every database test runs against.

Backends are chosen by ``--backends`` or, failing that, the ``ORM_JOURNAL_BACKENDS``
environment variable (a comma list of ``sqlite``, ``postgresql``, ``mariadb``; default
``sqlite``). A test that takes the ``backend`` fixture runs once per chosen backend and
gets two empty, separate databases (A and B), so that a run applied directly to A can be
compared with the same work replayed into B.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

BACKENDS = ("sqlite", "postgresql", "mariadb")
DEFAULT_URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/test",
}
URL_VARIABLES = {"postgresql": "ORM_JOURNAL_PG_URL", "mariadb": "ORM_JOURNAL_MARIADB_URL"}
# A server that is down should fail the test quickly, not after the driver's default wait.
CONNECT_TIMEOUT = 5
# A connection leaked by an earlier test can hold locks on the tables being dropped; fail
# after this many seconds with a message instead of hanging the whole run.
LOCK_TIMEOUT = 10
# How many times more often each fault of tests/reliability is injected under --soak.
SOAK_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class Backend:
    """Two empty databases (A and B) on one backend, for the duration of one test."""

    name: str
    url: str
    url_b: str
    _engines: list[Engine] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def engine(self, which: Literal["a", "b"] = "a", **kw: Any) -> Engine:
        """Create an engine on database A or B; it is disposed when the test ends."""
        if which not in ("a", "b"):
            raise ValueError(f"which must be 'a' or 'b', not {which!r}")
        engine = sa.create_engine(self.url if which == "a" else self.url_b, **kw)
        self._engines.append(engine)
        return engine

    def dispose(self) -> None:
        """Dispose every engine created through :meth:`engine`."""
        while self._engines:
            self._engines.pop().dispose()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--backends``."""
    parser.addoption(
        "--backends",
        default=None,
        help=(
            "comma list of database backends to run database tests on "
            f"({', '.join(BACKENDS)}); overrides ORM_JOURNAL_BACKENDS; default sqlite"
        ),
    )
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help=(
            "run the reliability campaign (tests/reliability) at soak size: every fault "
            f"injected {SOAK_FACTOR} times as often as in the default run"
        ),
    )


def chosen_backends(config: pytest.Config) -> list[str]:
    """Return the backends asked for, in order, without duplicates."""
    raw = config.getoption("--backends") or os.environ.get("ORM_JOURNAL_BACKENDS", "")
    names = list(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise pytest.UsageError(
            f"unknown backend(s) {', '.join(unknown)} in --backends/ORM_JOURNAL_BACKENDS; "
            f"choose from {', '.join(BACKENDS)}"
        )
    return names or ["sqlite"]


def pytest_report_header(config: pytest.Config) -> str:
    """Say which backends the database tests run on."""
    return f"orm-journal backends: {', '.join(chosen_backends(config))}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``backend`` once per chosen backend."""
    if "backend" in metafunc.fixturenames:
        names = chosen_backends(metafunc.config)
        metafunc.parametrize("backend", names, ids=names, indirect=True)


def _server_url(name: str) -> URL:
    """Return database A's URL for a server backend, from its variable or the default."""
    return sa.make_url(os.environ.get(URL_VARIABLES[name]) or DEFAULT_URLS[name])


def _second_database(url: URL) -> URL:
    """Return database B: the same server and credentials, database ``<A>_b``."""
    if not url.database:
        pytest.fail(f"the {url.get_backend_name()} URL {url!r} names no database")
    return url.set(database=f"{url.database}_b")


def _admin(url: URL, name: str, body: Callable[[Connection], None]) -> None:
    """Run ``body`` on an autocommit connection to ``url``, failing the test if unreachable."""
    engine = sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )
    try:
        try:
            connection = engine.connect()
        except sa.exc.OperationalError as err:
            problem = str(err.orig)
        else:
            with connection:
                body(connection)
            return
    finally:
        engine.dispose()
    # Outside the except block, so the report is this one message, not a driver traceback.
    pytest.fail(
        f"backend {name!r} was asked for (--backends / ORM_JOURNAL_BACKENDS) but "
        f"{url!r} cannot be reached: {problem.strip()}. Start the server, set "
        f"{URL_VARIABLES[name]}, or leave {name} out of the backends.",
        pytrace=False,
    )


def _without_database(url: URL) -> URL:
    """Return ``url`` naming no database (``URL.set`` cannot unset one)."""
    return URL.create(
        url.drivername,
        username=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        query=url.query,
    )


def _reset_postgresql(a: URL, b: URL) -> None:
    """Create databases A and B if missing, then empty the public schema of both."""

    def create_missing(connection: Connection) -> None:
        for url in (a, b):
            exists = connection.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": url.database},
            )
            if not exists:
                quoted = connection.dialect.identifier_preparer.quote(str(url.database))
                connection.exec_driver_sql(f"CREATE DATABASE {quoted}")

    def empty(connection: Connection) -> None:
        connection.exec_driver_sql(f"SET lock_timeout = '{LOCK_TIMEOUT}s'")
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")

    # The maintenance database "postgres" is there even when A is not.
    _admin(a.set(database="postgres"), "postgresql", create_missing)
    _admin(a, "postgresql", empty)
    _admin(b, "postgresql", empty)


def _reset_mariadb(a: URL, b: URL) -> None:
    """Drop and recreate databases A and B."""

    def recreate(connection: Connection) -> None:
        connection.exec_driver_sql(f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT}")
        for url in (a, b):
            quoted = connection.dialect.identifier_preparer.quote(str(url.database))
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
            connection.exec_driver_sql(f"CREATE DATABASE {quoted}")

    # Connect to no database in particular: the ones we drop may not exist.
    _admin(_without_database(a), "mariadb", recreate)


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Two empty databases on the backend this test instance is parametrised with."""
    name: str = request.param
    if name == "sqlite":
        a = sa.make_url(f"sqlite:///{tmp_path / 'a.sqlite'}")
        b = sa.make_url(f"sqlite:///{tmp_path / 'b.sqlite'}")
    else:
        a = _server_url(name)
        b = _second_database(a)
        if name == "postgresql":
            _reset_postgresql(a, b)
        else:
            _reset_mariadb(a, b)
    chosen = Backend(
        name=name,
        url=a.render_as_string(hide_password=False),
        url_b=b.render_as_string(hide_password=False),
    )
    try:
        yield chosen
    finally:
        chosen.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a new, empty SQLite database file in ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


@pytest.fixture(scope="session")
def soak(pytestconfig: pytest.Config) -> int:
    """The factor by which reliability tests multiply their counts: 1, or more with --soak."""
    return SOAK_FACTOR if pytestconfig.getoption("--soak") else 1
