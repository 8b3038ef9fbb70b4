"""The warehouse: tables of the platform in DuckDB (local) or Snowflake (production).

`Warehouse` takes a connection factory and a dialect, so the same code runs against a DuckDB file, a
Snowflake account, or fakesnow in tests. Every identifier is quoted, which keeps a column's case the same
on both engines, and every value travels as a bind parameter.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal

import pandas as pd

Dialect = Literal["duckdb", "snowflake"]
ConnectionFactory = Callable[[], AbstractContextManager[Any]]


class WarehouseError(RuntimeError):
    pass


def quote(identifier: str) -> str:
    """A quoted SQL identifier, exact in case; a double quote inside is doubled (the same in DuckDB and
    Snowflake), so any column name a file can hold is safe to put in SQL."""
    if not isinstance(identifier, str) or not identifier or "\x00" in identifier:
        raise WarehouseError(f"identifier {identifier!r} is not a name a table or column can have")
    return '"' + identifier.replace('"', '""') + '"'


class Warehouse:
    """A thin, dialect-aware layer over a DB-API connection."""

    def __init__(self, connect: ConnectionFactory, dialect: Dialect):
        self._connect = connect
        self.dialect = dialect

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self._connect() as conn:
            yield conn

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> str:
        # Snowflake's connector binds with pyformat by default (client side, `sql % params`), so a literal
        # '%' must be doubled when there are parameters; DuckDB binds qmark.
        if self.dialect == "snowflake" and params:
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql, params), list(params))
            if self.dialect == "snowflake":
                conn.commit()

    def query(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql, params), list(params))
            if self.dialect == "duckdb":
                return cursor.fetch_df()
            if not cursor.description:
                return pd.DataFrame()
            frame = cursor.fetch_pandas_all()
            names = [column[0] for column in cursor.description]
            # An empty Snowflake result may come back without its columns.
            return frame if list(frame.columns) == names else frame.reindex(columns=names)

    def query_chunks(self, sql: str, params: Sequence[Any] = (), chunk_rows: int = 250_000) -> Iterator[pd.DataFrame]:
        """The result in frames of at most about `chunk_rows` rows, so a large table never sits in memory whole."""
        with self.connection() as conn:
            if self.dialect == "duckdb":
                # A relation streams Arrow batches; cursor.execute would materialize the whole result first.
                reader = conn.sql(sql, params=list(params)).to_arrow_reader(chunk_rows)
                for batch in reader:
                    if batch.num_rows:
                        yield batch.to_pandas()
                return
            cursor = conn.cursor()
            cursor.execute(self._sql(sql, params), list(params))
            # fakesnow's cursor has no fetch_pandas_batches; the real connector streams with it.
            batches = cursor.fetch_pandas_batches() if hasattr(cursor, "fetch_pandas_batches") else [cursor.fetch_pandas_all()]
            for frame in batches:
                for start in range(0, len(frame), chunk_rows):
                    yield frame.iloc[start : start + chunk_rows]

    def delete_where(self, table: str, where: dict[str, Any]) -> None:
        """Delete the rows matching every column value in `where`; nothing happens if the table is missing."""
        if not self.table_exists(table):
            return
        clauses = " and ".join(f"{quote(column)} = ?" for column in where)
        self.execute(f"delete from {quote(table)} where {clauses}", list(where.values()))

    def move_rows(self, source: str, target: str, where: dict[str, Any]) -> None:
        """Replace `target`'s rows matching `where` with `source`'s, and take them out of `source`, in one
        transaction: a reader sees the old rows or the new ones, never a part (write-then-swap)."""
        columns = ", ".join(quote(column) for column in self.columns(source))
        # Outside the transaction: on Snowflake any DDL commits the transaction it runs in.
        self.execute(f"create table if not exists {quote(target)} as select * from {quote(source)} where 1 = 0")
        clauses, params = self._where(where)
        statements = [
            f"delete from {quote(target)} where {clauses}",
            f"insert into {quote(target)} ({columns}) select {columns} from {quote(source)} where {clauses}",
            f"delete from {quote(source)} where {clauses}",
        ]
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute("begin transaction" if self.dialect == "duckdb" else "begin")
            try:
                for sql in statements:
                    cursor.execute(self._sql(sql, params), list(params))
                cursor.execute("commit")
            except Exception:
                cursor.execute("rollback")
                raise

    def table_exists(self, table: str) -> bool:
        if self.dialect == "duckdb":
            sql = "select count(*) from information_schema.tables where table_name = ?"
        else:
            sql = "select count(*) from information_schema.tables where table_name = ? and table_schema = current_schema()"
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(self._sql(sql, [table]), [table])
            return cursor.fetchone()[0] > 0

    def columns(self, table: str) -> list[str]:
        with self.connection() as conn:
            cursor = conn.cursor()
            cursor.execute(f"select * from {quote(table)} limit 0")
            return [column[0] for column in cursor.description]

    def write(self, table: str, frame: pd.DataFrame, *, replace_where: dict[str, Any] | None = None) -> int:
        """Append `frame` to `table`, creating it if needed.

        With `replace_where`, the rows matching those column values are deleted first, in the same
        transaction, so re-running a partition replaces its rows instead of duplicating them.
        """
        for name in (table, *map(str, frame.columns)):
            quote(name)  # refuses an impossible name before anything reaches the database
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
            # DuckDB types an all-None (or empty) object column as NULL, which no later value can be cast
            # to; such a column is created as VARCHAR instead.
            described = conn.execute("describe select * from incoming_frame").fetchall()
            columns = ", ".join(f"{quote(name)} {_duckdb_type(kind)}" for name, kind, *_ in described)
            conn.execute(f"create table if not exists {quote(table)} ({columns})")
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
        columns = ", ".join(quote(str(column)) for column in frame.columns)
        if not self._snowflake_table_exists(cursor, table):
            # Our own DDL, not write_pandas(auto_create_table=True): the table and its columns are created
            # quoted, so their case is the frame's (fakesnow's write_pandas ignores quote_identifiers).
            cursor.execute(f"create table if not exists {quote(table)} ({_snowflake_columns(frame)})")
        staging = None
        if len(frame):
            # write_pandas runs DDL (a temporary stage and file format), and DDL commits any open
            # transaction; so load a temporary table first and swap the rows in one transaction below. Its
            # name is plain letters and digits, not derived from `table`: fakesnow's write_pandas puts the
            # table name in its SQL unquoted (the connector quotes it), so a customer's `-` would break it.
            staging = f"incoming_{uuid.uuid4().hex[:16]}"
            cursor.execute(f"create temporary table {quote(staging)} ({_snowflake_columns(frame)})")
        try:
            if staging is not None:
                write_pandas(conn, frame, staging, quote_identifiers=True, use_logical_type=True)
            cursor.execute("begin")
            try:
                if replace_where:
                    where, params = self._where(replace_where)
                    cursor.execute(self._sql(f"delete from {quote(table)} where {where}", params), params)
                if staging is not None:
                    cursor.execute(f"insert into {quote(table)} ({columns}) select {columns} from {quote(staging)}")
                cursor.execute("commit")
            except Exception:
                cursor.execute("rollback")
                raise
        finally:
            if staging is not None:
                cursor.execute(f"drop table if exists {quote(staging)}")

    def _snowflake_table_exists(self, cursor, table: str) -> bool:
        cursor.execute(
            "select count(*) from information_schema.tables where table_name = %s and table_schema = current_schema()",
            [table],
        )
        return cursor.fetchone()[0] > 0


def _duckdb_type(described: str) -> str:
    return "VARCHAR" if described.strip('"') == "NULL" else described


def _snowflake_type(values: pd.Series) -> str:
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _snowflake_type(pd.Series(dtype.categories))
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(dtype):
        return "NUMBER(38,0)"
    if pd.api.types.is_float_dtype(dtype):
        return "FLOAT"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "TIMESTAMP_TZ"
    if pd.api.types.is_datetime64_dtype(dtype):
        return "TIMESTAMP_NTZ"
    if dtype == object:
        inferred = pd.api.types.infer_dtype(values, skipna=True)
        return {
            "boolean": "BOOLEAN",
            "integer": "NUMBER(38,0)",
            "floating": "FLOAT",
            "mixed-integer-float": "FLOAT",
            "datetime64": "TIMESTAMP_NTZ",
            "datetime": "TIMESTAMP_NTZ",
            "date": "DATE",
        }.get(inferred, "VARCHAR")
    return "VARCHAR"


def _snowflake_columns(frame: pd.DataFrame) -> str:
    if frame.columns.empty:
        raise WarehouseError("cannot create a table from a frame without columns")
    return ", ".join(f"{quote(str(name))} {_snowflake_type(frame[name])}" for name in frame.columns)


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
