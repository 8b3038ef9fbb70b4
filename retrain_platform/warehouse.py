"""The warehouse: tables of the platform in DuckDB (local) or Snowflake (production).

`Warehouse` takes a connection factory and a dialect, so the same code runs against a DuckDB file, a
Snowflake account, or fakesnow in tests. Every identifier is quoted, which keeps a column's case the same
on both engines, and every value travels as a bind parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import pandas as pd

Dialect = Literal["duckdb", "snowflake"]
ConnectionFactory = Callable[[], AbstractContextManager[Any]]


class WarehouseError(RuntimeError):
    pass


def quote(identifier: str) -> str:
    if '"' in identifier:
        raise WarehouseError(f"identifier {identifier!r} may not contain a double quote")
    return f'"{identifier}"'


class Warehouse:
    """A thin, dialect-aware layer over a DB-API connection."""

    def __init__(self, connect: ConnectionFactory, dialect: Dialect):
        self._connect = connect
        self.dialect = dialect

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._connect() as conn:
            yield conn

    def _sql(self, sql: str) -> str:
        # Snowflake's connector binds with pyformat by default; DuckDB with qmark.
        return sql.replace("?", "%s") if self.dialect == "snowflake" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql), list(params))
            if self.dialect == "snowflake":
                conn.commit()

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql), list(params))
            if self.dialect == "duckdb":
                return cursor.fetch_df()
            return cursor.fetch_pandas_all() if cursor.description else pd.DataFrame()

    def table_exists(self, table: str) -> bool:
        if self.dialect == "duckdb":
            sql = "select count(*) from information_schema.tables where table_name = ?"
        else:
            sql = "select count(*) from information_schema.tables where table_name = ? and table_schema = current_schema()"
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql), [table])
            return cursor.fetchone()[0] > 0

    def columns(self, table: str) -> list[str]:
        frame = self.query(f"select * from {quote(table)} limit 0")
        return list(frame.columns)

    def write(self, table: str, frame: pd.DataFrame, *, replace_where: dict[str, Any] | None = None) -> int:
        """Append `frame` to `table`, creating it if needed.

        With `replace_where`, the rows matching those column values are deleted first, in the same
        transaction, so re-running a partition replaces its rows instead of duplicating them.
        """
        with self.connection() as conn:
            if self.dialect == "duckdb":
                self._write_duckdb(conn, table, frame, replace_where)
            else:
                self._write_snowflake(conn, table, frame, replace_where)
        return len(frame)

    def _where(self, replace_where: dict[str, Any]) -> tuple[str, list[Any]]:
        clauses = " and ".join(f"{quote(column)} = ?" for column in replace_where)
        return clauses, list(replace_where.values())

    def _write_duckdb(self, conn, table: str, frame: pd.DataFrame, replace_where) -> None:
        conn.register("incoming_frame", frame)
        try:
            conn.execute("begin transaction")
            conn.execute(f"create table if not exists {quote(table)} as select * from incoming_frame limit 0")
            if replace_where:
                where, params = self._where(replace_where)
                conn.execute(f"delete from {quote(table)} where {where}", params)
            conn.execute(f"insert into {quote(table)} by name select * from incoming_frame")
            conn.execute("commit")
        except Exception:
            conn.execute("rollback")
            raise
        finally:
            conn.unregister("incoming_frame")

    def _write_snowflake(self, conn, table: str, frame: pd.DataFrame, replace_where) -> None:
        from snowflake.connector.pandas_tools import write_pandas

        cursor = conn.cursor()
        exists = self._snowflake_table_exists(cursor, table)
        if replace_where and exists:
            where, params = self._where(replace_where)
            cursor.execute(self._sql(f"delete from {quote(table)} where {where}"), params)
        if len(frame):
            write_pandas(
                conn,
                frame,
                table,
                auto_create_table=not exists,
                quote_identifiers=True,
                use_logical_type=True,
            )
        elif not exists:
            raise WarehouseError(f"cannot create table {table!r} from an empty frame on Snowflake")
        conn.commit()

    def _snowflake_table_exists(self, cursor, table: str) -> bool:
        cursor.execute(
            "select count(*) from information_schema.tables where table_name = %s and table_schema = current_schema()",
            [table],
        )
        return cursor.fetchone()[0] > 0


def duckdb_connection_factory(path: str) -> ConnectionFactory:
    """Short-lived connections, so another process (the CLI, a second run) can open the file in between."""
    import duckdb

    @contextmanager
    def connect():
        conn = duckdb.connect(path)
        try:
            yield conn
        finally:
            conn.close()

    return connect
