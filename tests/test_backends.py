"""The ``backend`` fixture gives every test two reachable, separate, empty databases."""

from __future__ import annotations

import sqlalchemy as sa

from tests.conftest import Backend


def test_databases_are_reachable_distinct_and_empty(backend: Backend) -> None:
    """Databases A and B answer a query, are different databases and hold no tables."""
    assert backend.url != backend.url_b
    for which in ("a", "b"):
        engine = backend.engine(which)
        with engine.connect() as connection:
            assert connection.scalar(sa.text("SELECT 1")) == 1
            assert sa.inspect(connection).get_table_names() == []


def test_table_in_a_is_not_visible_in_b(backend: Backend) -> None:
    """A table created in database A does not exist in database B."""
    table = sa.Table("only_in_a", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
    with backend.engine("a").begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), [{"id": 1}])
    with backend.engine("a").connect() as connection:
        assert sa.inspect(connection).get_table_names() == ["only_in_a"]
    with backend.engine("b").connect() as connection:
        assert sa.inspect(connection).get_table_names() == []
