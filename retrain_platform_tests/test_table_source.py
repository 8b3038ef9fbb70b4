"""A customer whose new data comes from the warehouse itself: an outside loader appends rows to a table, and
`warehouse_source_sensor` (ticked with `dg.build_sensor_context` on a real instance) makes each load a batch.

The customer is the demo's lumen-streaming, trained once for the session (DuckDB warehouse, sqlite MLflow). The
same story runs on DuckDB and on Snowflake through fakesnow: there the spec, the landing table and the source
table live in fakesnow, the registry stays the trained one. fakesnow resolves identifiers case-insensitively
where Snowflake does not; every identifier here is quoted, so both see the same names.
"""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from retrain_platform import alerts, batches, sources
from retrain_platform import customers as customer_store
from retrain_platform.defs.automation import tick_in_process
from retrain_platform.defs.monitoring import monitor_batch
from retrain_platform.defs.partitions import batches as batch_partitions
from retrain_platform.defs.resources import Clock, SnowflakeWarehouse
from retrain_platform.defs.sources import (
    WAREHOUSE_SOURCE_SENSOR,
    source_sensors,
    warehouse_source_sensor,
)
from retrain_platform.ingest import BATCH_COLUMN, HISTORY_BATCH, batch_partition_key
from retrain_platform.spec import SpecError, parse_spec
from retrain_platform.warehouse import quote

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

CUSTOMER = "lumen-streaming"
SOURCE = "crm_export"
NOW = datetime(2026, 11, 20)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture(scope="module")
def trained(trained_customer):
    return trained_customer(CUSTOMER)


@pytest.fixture(params=["duckdb", "snowflake"])
def platform(request, trained, copy_platform, tmp_path):
    """The trained customer, reading `crm_export`, on the parametrized warehouse; yields (platform, resources)."""
    with copy_platform(trained, tmp_path / "platform") as platform:
        resources = {**platform.resources, "clock": Clock(frozen_at=NOW.isoformat())}
        if request.param == "duckdb":
            source_spec(platform.warehouse, trained.spec)
            yield platform, resources
            return
        import fakesnow

        (tmp_path / "fakesnow").mkdir()
        with fakesnow.patch(db_path=tmp_path / "fakesnow"):
            snowflake = SnowflakeWarehouse(account="acct", user="u", password="p", database="DB", schema="PUBLIC")
            db = snowflake.get_warehouse()
            landing = platform.landing(trained.spec)
            db.write(trained.spec.landing_table, landing[landing[BATCH_COLUMN] == HISTORY_BATCH])
            source_spec(db, trained.spec)
            yield platform, {**resources, "warehouse": snowflake}


def source_spec(db, spec, **fields):
    changed = parse_spec({**spec.model_dump(), "source_table": SOURCE, **fields})
    customer_store.save_spec(db, changed)
    return changed


def appended(platform, index: int) -> pd.DataFrame:
    """One of the demo customer's later batches, as an outside loader would append it."""
    return platform.demo[CUSTOMER].batches[index].copy()


def tick(platform, resources, cursor=None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=platform.instance, cursor=cursor, resources=resources)
    result = warehouse_source_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def batch_ids_of(db, spec, batch_id: str) -> list:
    rows = db.query(f"select {quote(spec.id_column)} as \"id\" from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?", [batch_id])
    return sorted(rows["id"].tolist())


def test_each_load_becomes_one_batch_with_exactly_its_rows(platform):
    platform, resources = platform
    db = resources["warehouse"].get_warehouse()
    spec = customer_store.load_spec(db, CUSTOMER)
    first, second = appended(platform, 0), appended(platform, 1)
    db.write(SOURCE, first)

    result = tick(platform, resources)
    [request] = result.run_requests
    key = batch_partition_key(CUSTOMER, "table-000001")
    assert (request.job_name, request.partition_key) == (monitor_batch.name, key)
    assert request.tags["retrain/customer"] == CUSTOMER
    assert platform.instance.has_dynamic_partition(batch_partitions.name, key)
    assert batch_ids_of(db, spec, "table-000001") == sorted(first[spec.id_column].tolist())
    assert sources.watermarks(db)[CUSTOMER].value == pd.Timestamp(first[spec.timestamp_column].max()).to_pydatetime()

    again = tick(platform, resources, result.cursor)
    assert not again.run_requests
    assert again.skip_reason.skip_message == "no new rows in any source table"

    db.write(SOURCE, second)
    later = tick(platform, resources, again.cursor)
    [request] = later.run_requests
    assert request.partition_key == batch_partition_key(CUSTOMER, "table-000002")
    assert batch_ids_of(db, spec, "table-000002") == sorted(second[spec.id_column].tolist())
    assert batch_ids_of(db, spec, "table-000001") == sorted(first[spec.id_column].tolist())
    assert sources.history(db, CUSTOMER)["source_rows"].tolist() == [len(first), len(second)]


def test_a_backlog_is_taken_in_batches_of_at_most_source_batch_rows(platform):
    platform, resources = platform
    db = resources["warehouse"].get_warehouse()
    spec = source_spec(db, customer_store.load_spec(db, CUSTOMER), source_batch_rows=300)
    backlog = pd.concat([appended(platform, 0), appended(platform, 1)])
    db.write(SOURCE, backlog)

    cursor, taken = None, []
    for number in range(1, 7):
        result = tick(platform, resources, cursor)
        cursor = result.cursor
        if not result.run_requests:
            break
        [request] = result.run_requests
        assert request.partition_key == batch_partition_key(CUSTOMER, sources.source_batch_id(number))
        taken.append(batch_ids_of(db, spec, sources.source_batch_id(number)))
    assert result.skip_reason.skip_message == "no new rows in any source table"
    assert len(backlog) == 1000 and [len(ids) for ids in taken] == [300, 300, 300, 100]
    assert sorted(i for ids in taken for i in ids) == sorted(backlog[spec.id_column].tolist())
    # In watermark order: each batch holds rows no later than the next batch's first.
    ends = [backlog.set_index(spec.id_column).loc[ids, spec.timestamp_column] for ids in taken]
    assert all(earlier.max() <= later.min() for earlier, later in zip(ends, ends[1:]))


def test_rows_the_file_checks_refuse_are_not_stored_and_are_taken_once_corrected(platform):
    platform, resources = platform
    db = resources["warehouse"].get_warehouse()
    spec = customer_store.load_spec(db, CUSTOMER)
    rows = appended(platform, 0)
    rows["monthly_fee"] = rows["monthly_fee"].astype(str)
    rows.loc[rows.index[3], "monthly_fee"] = "twelve"
    db.write(SOURCE, rows)

    refused = tick(platform, resources)
    assert not refused.run_requests
    assert "monthly_fee" in refused.skip_reason.skip_message
    assert batch_ids_of(db, spec, "table-000001") == []
    assert CUSTOMER not in sources.watermarks(db)
    sent = alerts.history(db, CUSTOMER, kind=sources.SOURCE_REFUSED)
    assert len(sent) == 1 and "'monthly_fee'" in sent["message"].iloc[0]
    tick(platform, resources, refused.cursor)
    assert len(alerts.history(db, CUSTOMER, kind=sources.SOURCE_REFUSED)) == 1, "one alert per refusal, not per tick"

    db.execute(f"update {quote(SOURCE)} set \"monthly_fee\" = '12.5' where \"monthly_fee\" = 'twelve'")
    corrected = tick(platform, resources, refused.cursor)
    [request] = corrected.run_requests
    assert batch_ids_of(db, spec, "table-000001") == sorted(rows[spec.id_column].tolist())


def test_malformed_appended_rows_are_quarantined_like_a_file_batch(trained, copy_platform, tmp_path):
    """On DuckDB, with the monitoring run the tick requests executed in-process; the watermark is a load
    sequence number, not the timestamp."""
    with copy_platform(trained, tmp_path / "platform") as platform:
        resources = {**platform.resources, "clock": Clock(frozen_at=NOW.isoformat())}
        db = platform.warehouse
        source_spec(db, trained.spec, source_watermark_column="load_id")
        rows = appended(platform, 0).assign(load_id=7)
        rows.loc[rows.index[5], "monthly_fee"] = np.inf
        db.write(SOURCE, rows)
        definitions = dg.Definitions(
            assets=platform.defs.assets,
            asset_checks=platform.defs.asset_checks,
            jobs=platform.defs.jobs,
            sensors=source_sensors,
            executor=platform.defs.executor,
            resources=resources,
        )

        ticked = tick_in_process(definitions, WAREHOUSE_SOURCE_SENSOR, platform.instance, run_config=QUIET)
        [(request, run)] = ticked.runs
        assert request.partition_key == batch_partition_key(CUSTOMER, "table-000001")
        assert not run.success
        state = batches.state_of(db, CUSTOMER, "table-000001")
        assert state["state"] == batches.BatchState.QUARANTINED
        assert state["column"] == "monthly_fee"
        assert sources.watermarks(db)[CUSTOMER].value == 7

        db.write(SOURCE, appended(platform, 1).assign(load_id=8))
        ticked = tick_in_process(definitions, WAREHOUSE_SOURCE_SENSOR, platform.instance, cursor=ticked.cursor, run_config=QUIET)
        [(request, run)] = ticked.runs
        assert request.partition_key == batch_partition_key(CUSTOMER, "table-000002")
        assert run.success
        assert batches.quarantined_batches(db, CUSTOMER) == ["table-000001"]


def test_the_source_table_cannot_be_the_landing_table(trained):
    with pytest.raises(SpecError, match="source_table: it is the landing table"):
        parse_spec({**trained.spec.model_dump(), "source_table": trained.spec.landing_table.upper()})
