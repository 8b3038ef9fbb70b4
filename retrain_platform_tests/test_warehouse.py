"""The warehouse, the ledger and the customer catalog on DuckDB and on Snowflake (through fakesnow).

Every behaviour test runs on both backends: a DuckDB file under tmp_path, and the real Snowflake connector
code patched by fakesnow onto DuckDB. Where fakesnow is kinder than Snowflake the test says so:

- fakesnow resolves identifiers case-insensitively (`select * from "T"` finds table "t"); Snowflake does
  not, so a quoted lower-case column must be quoted in every query.
- a missing table raises "Catalog Error: Table with name ... does not exist!" where Snowflake says
  "Object '...' does not exist or not authorized."
- fakesnow's write_pandas ignores quote_identifiers when it creates a table (it upper-cases the names);
  the warehouse creates tables with its own quoted DDL so both keep the frame's case.
- fakesnow's write_pandas does not double a `"` inside a column name (the connector does), so such a name
  is tested on DuckDB only.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from retrain_platform import customers, ledger
from retrain_platform.customers import UnknownCustomerError
from retrain_platform.defs.resources import DuckDBWarehouse, SnowflakeWarehouse
from retrain_platform.spec import SpecError, parse_spec
from retrain_platform.warehouse import Warehouse, WarehouseError, duckdb_connection_factory, quote

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

TABLE = "accounts"


@pytest.fixture(params=["duckdb", "snowflake"])
def warehouse(request, tmp_path) -> Warehouse:
    if request.param == "duckdb":
        yield DuckDBWarehouse(database=str(tmp_path / "warehouse.duckdb")).get_warehouse()
        return
    import fakesnow

    (tmp_path / "fakesnow").mkdir()
    with fakesnow.patch(db_path=tmp_path / "fakesnow"):
        yield SnowflakeWarehouse(
            account="acct", user="u", password="p", database="DB", schema="PUBLIC"
        ).get_warehouse()


def accounts(customer: str, start: int, rows: int = 3) -> pd.DataFrame:
    ids = np.arange(start, start + rows)
    return pd.DataFrame(
        {
            "customer": customer,
            "account_id": ids,
            "MonthlyFee": ids * 1.5,
            "plan": [f"plan_{i % 2}" for i in ids],
            "signed_up": pd.date_range("2025-03-01 08:30:15", periods=rows, freq="36h") + pd.to_timedelta(ids, "s"),
        }
    )


def read(warehouse: Warehouse, table: str = TABLE) -> pd.DataFrame:
    return warehouse.query(f'select * from {quote(table)} order by "customer", "account_id"')


def test_write_creates_the_table_and_returns_the_row_count(warehouse):
    assert not warehouse.table_exists(TABLE)
    assert warehouse.write(TABLE, accounts("acme", 1)) == 3
    assert warehouse.table_exists(TABLE)
    stored = read(warehouse)
    assert stored["account_id"].tolist() == [1, 2, 3]
    assert stored["plan"].tolist() == ["plan_1", "plan_0", "plan_1"]
    assert stored["MonthlyFee"].tolist() == [1.5, 3.0, 4.5]


def test_write_appends_without_replace_where(warehouse):
    warehouse.write(TABLE, accounts("acme", 1))
    warehouse.write(TABLE, accounts("acme", 4, rows=2))
    assert read(warehouse)["account_id"].tolist() == [1, 2, 3, 4, 5]


def test_replace_where_replaces_only_that_customers_rows(warehouse):
    warehouse.write(TABLE, accounts("acme", 1), replace_where={"customer": "acme"})
    warehouse.write(TABLE, accounts("globex", 10), replace_where={"customer": "globex"})

    warehouse.write(TABLE, accounts("acme", 100, rows=2), replace_where={"customer": "acme"})
    stored = read(warehouse)
    assert stored.loc[stored["customer"] == "acme", "account_id"].tolist() == [100, 101]
    assert stored.loc[stored["customer"] == "globex", "account_id"].tolist() == [10, 11, 12]


def test_moved_rows_replace_only_their_key_and_leave_the_source(warehouse):
    warehouse.write(TABLE, accounts("acme", 1))
    warehouse.write(TABLE, accounts("globex", 10))
    warehouse.write("accounts_staging", accounts("acme", 100, rows=2))
    warehouse.write("accounts_staging", accounts("initech", 200, rows=1))

    warehouse.move_rows("accounts_staging", TABLE, {"customer": "acme"})

    stored = read(warehouse)
    assert stored.loc[stored["customer"] == "acme", "account_id"].tolist() == [100, 101]
    assert stored.loc[stored["customer"] == "globex", "account_id"].tolist() == [10, 11, 12]
    left = warehouse.query("select customer from accounts_staging")
    assert left["customer"].tolist() == ["initech"]
    # A target that does not exist yet is created with the source's columns.
    warehouse.move_rows("accounts_staging", "accounts_new", {"customer": "initech"})
    assert warehouse.query("select account_id from accounts_new")["account_id"].tolist() == [200]


def test_rerunning_a_replace_does_not_duplicate(warehouse):
    for _ in range(3):
        warehouse.write(TABLE, accounts("acme", 1), replace_where={"customer": "acme"})
    assert len(read(warehouse)) == 3


def test_replace_where_matches_on_every_given_column(warehouse):
    warehouse.write(TABLE, pd.concat([accounts("acme", 1), accounts("globex", 1)]))
    warehouse.write(TABLE, accounts("acme", 2, rows=1).assign(plan="gold"), replace_where={"customer": "acme", "account_id": 2})
    stored = read(warehouse)
    assert stored[["customer", "account_id", "plan"]].values.tolist() == [
        ["acme", 1, "plan_1"],
        ["acme", 2, "gold"],
        ["acme", 3, "plan_1"],
        ["globex", 1, "plan_1"],
        ["globex", 2, "plan_0"],
        ["globex", 3, "plan_1"],
    ]


def test_a_failed_replace_keeps_the_old_rows(warehouse):
    """The delete and the insert are one transaction: a load that fails leaves the partition as it was."""
    warehouse.write(TABLE, accounts("acme", 1))
    broken = accounts("acme", 7, rows=1).assign(account_id="not a number")
    with pytest.raises(Exception):
        warehouse.write(TABLE, broken, replace_where={"customer": "acme"})
    assert read(warehouse)["account_id"].tolist() == [1, 2, 3]


def test_an_empty_frame_creates_the_table_and_clears_the_partition(warehouse):
    empty = accounts("acme", 1).iloc[:0]
    assert warehouse.write(TABLE, empty) == 0
    assert warehouse.table_exists(TABLE)
    assert warehouse.columns(TABLE) == ["customer", "account_id", "MonthlyFee", "plan", "signed_up"]

    warehouse.write(TABLE, accounts("acme", 1))
    warehouse.write(TABLE, empty, replace_where={"customer": "acme"})
    assert read(warehouse).empty


def test_column_names_keep_their_case(warehouse):
    warehouse.write(TABLE, accounts("acme", 1))
    assert warehouse.columns(TABLE) == ["customer", "account_id", "MonthlyFee", "plan", "signed_up"]
    fees = warehouse.query(f'select "MonthlyFee" from {quote(TABLE)} order by "MonthlyFee"')
    assert list(fees.columns) == ["MonthlyFee"]
    assert fees["MonthlyFee"].tolist() == [1.5, 3.0, 4.5]
    catalog = warehouse.query(
        "select column_name from information_schema.columns where table_name = ? order by ordinal_position", [TABLE]
    )
    assert catalog.iloc[:, 0].tolist() == ["customer", "account_id", "MonthlyFee", "plan", "signed_up"]


def test_columns_are_matched_by_name_not_position(warehouse):
    warehouse.write(TABLE, accounts("acme", 1))
    shuffled = accounts("globex", 10)[["signed_up", "plan", "MonthlyFee", "account_id", "customer"]]
    warehouse.write(TABLE, shuffled)
    stored = read(warehouse)
    assert stored.loc[stored["customer"] == "globex", "account_id"].tolist() == [10, 11, 12]
    assert stored.loc[stored["customer"] == "globex", "MonthlyFee"].tolist() == [15.0, 16.5, 18.0]


def test_timestamps_round_trip_as_datetimes(warehouse):
    frame = accounts("acme", 1)
    warehouse.write(TABLE, frame)
    stored = read(warehouse)
    assert pd.api.types.is_datetime64_dtype(stored["signed_up"])
    assert stored["signed_up"].tolist() == frame["signed_up"].tolist()
    assert isinstance(stored["signed_up"].iloc[0], datetime)


def test_nulls_round_trip(warehouse):
    frame = pd.DataFrame(
        {
            "customer": ["acme", "acme", "acme"],
            "account_id": [1, 2, 3],
            "MonthlyFee": [1.5, np.nan, 4.5],
            "plan": ["basic", None, "pro"],
            "note": pd.array(["x", pd.NA, pd.NA], dtype="string"),
            "signed_up": pd.to_datetime(["2025-01-01", None, "2025-01-03"]),
        }
    )
    warehouse.write(TABLE, frame)
    stored = read(warehouse)
    assert stored.isna().to_numpy().tolist() == frame.isna().to_numpy().tolist()
    assert stored["plan"].tolist()[::2] == ["basic", "pro"]


def test_table_exists(warehouse):
    assert warehouse.table_exists(TABLE) is False
    warehouse.write(TABLE, accounts("acme", 1))
    assert warehouse.table_exists(TABLE) is True
    assert warehouse.table_exists("other_table") is False
    # Tables are created quoted: the upper-case name is a different (missing) table on both engines.
    assert warehouse.table_exists(TABLE.upper()) is False


def test_query_with_bind_parameters(warehouse):
    warehouse.write(TABLE, pd.concat([accounts("acme", 1), accounts("globex", 10)]))
    found = warehouse.query(
        f'select "account_id" from {quote(TABLE)} where "customer" = ? and "MonthlyFee" > ? order by "account_id"',
        ["globex", 16.0],
    )
    assert found["account_id"].tolist() == [11, 12]


def test_a_literal_percent_sign_survives_parameter_binding(warehouse):
    """Snowflake's connector binds client-side with `sql % params`: a `%` in the SQL must not break it."""
    warehouse.write(TABLE, pd.concat([accounts("acme", 1), accounts("globex", 10)]))
    found = warehouse.query(
        f"select \"account_id\" from {quote(TABLE)} where \"plan\" like 'plan_%' and \"customer\" = ? order by 1",
        ["acme"],
    )
    assert found["account_id"].tolist() == [1, 2, 3]


def test_query_without_rows_keeps_the_columns(warehouse):
    warehouse.write(TABLE, accounts("acme", 1))
    found = warehouse.query(f'select "account_id", "plan" from {quote(TABLE)} where "customer" = ?', ["nobody"])
    assert found.empty
    assert list(found.columns) == ["account_id", "plan"]


def test_execute_runs_a_statement_with_parameters(warehouse):
    warehouse.write(TABLE, pd.concat([accounts("acme", 1), accounts("globex", 10)]))
    warehouse.execute(f'delete from {quote(TABLE)} where "customer" = ?', ["acme"])
    assert read(warehouse)["customer"].unique().tolist() == ["globex"]


def test_values_with_quotes_are_data_not_sql(warehouse):
    nasty = "x'; drop table accounts; --"
    frame = accounts("acme", 1).assign(plan=["O'Brien", nasty, 'say "hi"'])
    warehouse.write(TABLE, frame)
    assert read(warehouse)["plan"].tolist() == ["O'Brien", nasty, 'say "hi"']

    found = warehouse.query(f'select "account_id" from {quote(TABLE)} where "plan" = ?', ["O'Brien"])
    assert found["account_id"].tolist() == [1]
    assert warehouse.query(f'select * from {quote(TABLE)} where "customer" = ?', [nasty]).empty

    warehouse.write(TABLE, frame.iloc[:1], replace_where={"plan": "O'Brien"})
    assert len(read(warehouse)) == 3
    assert warehouse.table_exists(TABLE)


def test_any_column_name_a_file_can_hold_is_written_queried_and_replaced(warehouse):
    key = 'say "hi"' if warehouse.dialect == "duckdb" else "say 'hi'"
    names = {"MonthlyFee": "air temp", "plan": "rel. humidity", "account_id": key}
    frame = accounts("acme", 1).rename(columns=names).assign(**{"wind-speed": 2.0, "coût €": "élevé"})
    warehouse.write(TABLE, frame)
    replaced = frame.iloc[:1].assign(**{"coût €": "bas"})
    warehouse.write(TABLE, replaced, replace_where={"coût €": "élevé", key: 1})

    assert warehouse.columns(TABLE) == list(frame.columns)
    hi, cost, wind, humidity = (quote(name) for name in (key, "coût €", "wind-speed", "rel. humidity"))
    stored = warehouse.query(
        f"select {hi}, {cost}, {wind} from {quote(TABLE)} where {humidity} is not null order by {hi}"
    )
    assert stored.to_dict("list") == {key: [1, 2, 3], "coût €": ["bas", "élevé", "élevé"], "wind-speed": [2.0] * 3}


def test_a_name_no_table_or_column_can_have_is_refused(warehouse):
    with pytest.raises(WarehouseError, match="is not a name a table or column can have"):
        warehouse.write(TABLE, accounts("acme", 1).rename(columns={"plan": ""}))


def test_a_missing_table_raises(warehouse):
    # fakesnow: "Catalog Error: Table with name ... does not exist!"; Snowflake: "... does not exist or not authorized."
    with pytest.raises(Exception, match="does not exist"):
        warehouse.query('select * from "missing_table"')


def test_data_is_shared_between_warehouse_objects(warehouse, tmp_path):
    """Each call opens its own short connection, so a second process sees what the first wrote."""
    warehouse.write(TABLE, accounts("acme", 1))
    if warehouse.dialect == "duckdb":
        other = Warehouse(duckdb_connection_factory(str(tmp_path / "warehouse.duckdb")), "duckdb")
    else:
        other = SnowflakeWarehouse(account="acct", user="u", password="p", database="DB", schema="PUBLIC").get_warehouse()
    assert read(other)["account_id"].tolist() == [1, 2, 3]


def test_writes_leave_no_staging_tables(warehouse):
    warehouse.write(TABLE, accounts("acme", 1), replace_where={"customer": "acme"})
    warehouse.write(TABLE, accounts("acme", 1), replace_where={"customer": "acme"})
    tables = warehouse.query("select table_name from information_schema.tables")
    assert tables.iloc[:, 0].tolist() == [TABLE]


# --- the ledger ---------------------------------------------------------------------------------------


def entry(customer: str, action: str, to_version: str | None, at: str, **extra) -> ledger.LedgerEntry:
    return ledger.LedgerEntry(
        customer=customer,
        model_name=f"retrain-{customer}",
        action=action,
        verdict="pass" if action == "promote" else "fail",
        from_version=extra.pop("from_version", None),
        to_version=to_version,
        champion_after=extra.pop("champion_after", to_version),
        reasons=extra.pop("reasons", f"{action} it"),
        recorded_at=datetime.fromisoformat(at),
        **extra,
    )


def test_ledger_history_is_empty_before_anything_happened(warehouse):
    history = ledger.history(warehouse, "acme")
    assert history.empty
    assert list(history.columns) == ledger.LEDGER_COLUMNS


def test_ledger_appends_and_reads_back_in_time_order(warehouse):
    ledger.append(warehouse, entry("acme", "promote", "2", "2025-05-02 10:00", from_version="1", dagster_run_id="run-2"))
    ledger.append(warehouse, entry("acme", "promote", "1", "2025-05-01 09:00"))
    ledger.append(warehouse, entry("globex", "reject", None, "2025-05-01 12:00", champion_after=None, reasons="AUC 0.51 < floor 0.6"))
    ledger.append(warehouse, entry("acme", "rollback", "1", "2025-05-03 08:00", from_version="2", reasons="O'Brien's call"))

    acme = ledger.history(warehouse, "acme")
    assert list(acme.columns) == ledger.LEDGER_COLUMNS
    assert acme["action"].tolist() == ["promote", "promote", "rollback"]
    assert acme["to_version"].tolist() == ["1", "2", "1"]
    assert acme["reasons"].iloc[-1] == "O'Brien's call"
    assert pd.isna(acme["from_version"].iloc[0]) and acme["from_version"].iloc[1] == "1"
    assert pd.isna(acme["dagster_run_id"].iloc[0]) and acme["dagster_run_id"].iloc[1] == "run-2"
    assert pd.api.types.is_datetime64_dtype(acme["recorded_at"])
    assert acme["recorded_at"].tolist() == [
        pd.Timestamp("2025-05-01 09:00"),
        pd.Timestamp("2025-05-02 10:00"),
        pd.Timestamp("2025-05-03 08:00"),
    ]

    globex = ledger.history(warehouse, "globex")
    assert globex["action"].tolist() == ["reject"]
    assert pd.isna(globex["to_version"].iloc[0]) and pd.isna(globex["champion_after"].iloc[0])
    assert len(ledger.history(warehouse)) == 4


def test_ledger_first_entry_may_have_all_optional_fields_empty(warehouse):
    ledger.append(warehouse, entry("acme", "hold", None, "2025-05-01 09:00", champion_after=None))
    ledger.append(warehouse, entry("acme", "promote", "3", "2025-05-02 09:00", dagster_run_id="r", data_version="abc"))
    history = ledger.history(warehouse, "acme")
    assert history["to_version"].tolist()[1:] == ["3"]
    assert history["data_version"].tolist()[1:] == ["abc"]


# --- the customer catalog -----------------------------------------------------------------------------


def make_spec(customer: str, **changes):
    return parse_spec(
        {
            "customer": customer,
            "landing_table": f"landing_{customer.replace('-', '_')}",
            "timestamp_column": "signed_up",
            "label_column": "churned",
            "features": [{"name": "MonthlyFee", "kind": "numeric"}, {"name": "plan", "kind": "categorical"}],
            "task": "binary",
            "primary_metric": "roc_auc",
            **changes,
        }
    )


def test_no_customers_before_setup(warehouse):
    assert customers.list_specs(warehouse) == []
    with pytest.raises(UnknownCustomerError, match="no customer has been set up yet"):
        customers.load_spec(warehouse, "acme")


def test_save_and_load_a_spec(warehouse):
    spec = make_spec("acme", thresholds={"floor": 0.7}, mode="approve")
    customers.save_spec(warehouse, spec)
    assert customers.load_spec(warehouse, "acme") == spec
    with pytest.raises(UnknownCustomerError, match="unknown customer 'globex'"):
        customers.load_spec(warehouse, "globex")


def test_saving_a_spec_again_replaces_it(warehouse):
    customers.save_spec(warehouse, make_spec("acme"))
    customers.save_spec(warehouse, make_spec("acme", mode="alert", training_window_days=30))
    loaded = customers.load_spec(warehouse, "acme")
    assert (loaded.mode, loaded.training_window_days) == ("alert", 30)
    rows = warehouse.query(f"select * from {quote(customers.SPECS_TABLE)}")
    assert len(rows) == 1
    assert pd.api.types.is_datetime64_dtype(rows["updated_at"])


def test_list_specs_is_sorted_by_customer(warehouse):
    for customer in ["zeta", "acme", "m-corp"]:
        customers.save_spec(warehouse, make_spec(customer))
    assert [spec.customer for spec in customers.list_specs(warehouse)] == ["acme", "m-corp", "zeta"]


def test_load_spec_validates_the_id_before_touching_sql(warehouse):
    customers.save_spec(warehouse, make_spec("acme"))
    with pytest.raises(SpecError, match="invalid customer id"):
        customers.load_spec(warehouse, "acme' or '1'='1")


def test_load_landing_reads_the_customers_table(warehouse):
    spec = make_spec("acme")
    with pytest.raises(SpecError, match="landing_table: table 'landing_acme' does not exist"):
        customers.load_landing(warehouse, spec)
    warehouse.write(spec.landing_table, accounts("acme", 1).assign(churned=[0, 1, 0]))
    landing = customers.load_landing(warehouse, spec)
    assert landing.sort_values("account_id")["MonthlyFee"].tolist() == [1.5, 3.0, 4.5]
    assert {"MonthlyFee", "plan", "signed_up", "churned"} <= set(landing.columns)
