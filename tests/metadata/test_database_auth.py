"""The shared database asks every connection for its password (docs/security.md)."""

import pytest
import sqlalchemy

from flotilla.testing.postgres import PostgresServer


@pytest.mark.parametrize("password", ["", "wrong"])
def test_postgres_refuses_a_connection_without_the_password(postgres: PostgresServer, password: str) -> None:
    url = postgres.url().replace(f":{postgres.password}@", f":{password}@" if password else "@")
    with pytest.raises(sqlalchemy.exc.OperationalError, match="password"):
        with sqlalchemy.create_engine(url).connect():
            pass
    with sqlalchemy.create_engine(postgres.url()).connect() as conn:  # the farm's own credential works
        assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
