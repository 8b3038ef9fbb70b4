"""Quarantine, not poison (issue 10, case 1): a batch that fails its blocking checks is quarantined with the rule
and column, training, drift and metrics leave its rows out, `batches` lists it, `--drop` and `--release` do what
they say and are recorded; onboarding refuses infinities and future timestamps in one line."""

from __future__ import annotations

import gc
import json

import numpy as np
import pandas as pd
import pytest

from retrain_platform import alerts, batches, evidence, monitoring, onboarding
from retrain_platform.batches import BatchState
from retrain_platform.defs.training import snapshot_table
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.runner import Runner, RunFailed
from retrain_platform.status import customer_status, format_table
from retrain_platform.warehouse import quote
from retrain_platform_tests.conftest import assert_one_line_error, cli

CUSTOMER = "swiftcart-delivery"
FUTURE, INFINITE, GOOD = "future", "infinite", "good"
FINITE_RULE = "expect_column_values_to_be_between"


@pytest.fixture(scope="module")
def poisoned(trained_customer, copy_platform, tmp_path_factory):
    """A trained swiftcart home where a good batch, a batch with a future timestamp and a batch with one
    infinity were ingested and monitored in-process, as `retrain-platform ingest` does."""
    with copy_platform(trained_customer(CUSTOMER), tmp_path_factory.mktemp("quarantine")) as platform:
        runner = Runner(platform.defs, platform.instance, charts=False)
        spec = runner_spec(platform)
        week = platform.demo[CUSTOMER].batches
        refusals = {}
        runner.ingest_and_monitor(spec, week[0], GOOD)
        for batch_id, frame in ((FUTURE, future_rows(week[1], spec)), (INFINITE, infinite_rows(week[2]))):
            with pytest.raises(RunFailed) as failed:
                runner.ingest_and_monitor(spec, frame, batch_id)
            refusals[batch_id] = str(failed.value)
        yield platform, runner, spec, refusals
        del runner
        gc.collect()  # the runner's pooled connections close before the instance they belong to


def runner_spec(platform):
    from retrain_platform.customers import load_spec

    return load_spec(platform.warehouse, CUSTOMER)


def future_rows(frame: pd.DataFrame, spec) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[frame.index[-2:], spec.timestamp_column] = pd.Timestamp.now() + pd.Timedelta(days=400)
    return frame


def infinite_rows(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["distance_km"] = frame["distance_km"].astype(float)
    frame.loc[frame.index[3], "distance_km"] = np.inf
    return frame


def landing_ids(platform, spec, batch_id: str) -> set:
    rows = platform.warehouse.query(
        f"select {quote(spec.id_column)} as id from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?",
        [batch_id],
    )
    return set(rows["id"])


def test_failing_batches_are_quarantined_naming_the_rule_and_column(poisoned, tmp_path):
    platform, _, spec, refusals = poisoned

    states = batches.current_states(platform.warehouse, CUSTOMER).set_index("batch_id")
    assert states.loc[FUTURE, "state"] == BatchState.QUARANTINED
    assert states.loc[FUTURE, "column"] == spec.timestamp_column
    assert states.loc[FUTURE, "rule"] == FINITE_RULE  # the upper bound is now
    assert "timestamps must not be in the future" in states.loc[FUTURE, "detail"]
    assert states.loc[INFINITE, "state"] == BatchState.QUARANTINED
    assert (states.loc[INFINITE, "column"], states.loc[INFINITE, "rule"]) == ("distance_km", FINITE_RULE)
    assert "values must be finite" in states.loc[INFINITE, "detail"]
    assert set(states.loc[[FUTURE, INFINITE], "by"]) == {"check inference_batch_quality"}
    assert GOOD not in states.index
    # The ingest's error says what happened and what to do, in one line; the rows are kept for a person.
    for batch_id, column, week in ((FUTURE, spec.timestamp_column, 1), (INFINITE, "distance_km", 2)):
        message = refusals[batch_id]
        assert "\n" not in message
        assert message.startswith(f"batch {batch_id} of {CUSTOMER} quarantined: column {column!r}")
        assert f"--batch {batch_id} --replace" in message and f"batches {CUSTOMER} --drop {batch_id}" in message
        assert len(landing_ids(platform, spec, batch_id)) == len(platform.demo[CUSTOMER].batches[week])
        for table in (monitoring.PREDICTIONS_TABLE, monitoring.DRIFT_BATCHES_TABLE, monitoring.METRICS_TABLE):
            measured = platform.warehouse.query(f"select * from {quote(table)} where batch_id = ?", [batch_id])
            assert measured.empty, table
    rows = customer_status(platform.warehouse, platform.registry)
    assert {row["customer"]: row["quarantined_batches"] for row in rows if row["quarantined_batches"]} == {CUSTOMER: 2}
    assert f"{CUSTOMER}: 2 quarantined batch(es), left out of training, drift and metrics" in format_table(rows)
    shown = cli("status", "--json", home=platform.home.root, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert {row["customer"]: row["quarantined_batches"] for row in json.loads(shown.stdout)}[CUSTOMER] == 2


def test_training_afterwards_succeeds_and_its_snapshot_leaves_the_quarantined_rows_out(poisoned):
    platform, _, spec, _ = poisoned

    result = platform.train(CUSTOMER)

    assert result.success
    snapshot = platform.warehouse.query(f"select * from {quote(snapshot_table(CUSTOMER))}")
    assert not set(snapshot[spec.id_column]) & (landing_ids(platform, spec, FUTURE) | landing_ids(platform, spec, INFINITE))
    assert landing_ids(platform, spec, GOOD) <= set(snapshot[spec.id_column])
    # Nor are their labels new rows for the new-labels sensor: they would retrain it on every tick.
    assert platform.landing(spec).loc[lambda f: f[BATCH_COLUMN] == FUTURE, spec.label_column].notna().any()
    assert evidence.labelled_rows(platform.warehouse, [spec], {CUSTOMER: snapshot_table(CUSTOMER)})[CUSTOMER].fresh == 0


def test_batches_lists_every_batch_with_rows_labels_state_and_rule(poisoned, tmp_path):
    platform, _, spec, _ = poisoned

    listed = batches.list_batches(platform.warehouse, spec).set_index("batch_id")

    assert listed.loc[GOOD, "state"] == "ok" and listed.loc[GOOD, "rows"] == len(platform.demo[CUSTOMER].batches[0])
    assert listed.loc[FUTURE, ["state", "column"]].tolist() == ["quarantined", spec.timestamp_column]
    assert listed.loc[INFINITE, ["state", "rule", "column"]].tolist() == ["quarantined", FINITE_RULE, "distance_km"]
    assert listed.loc[INFINITE, "labelled_rows"] == listed.loc[INFINITE, "rows"] > 0
    # The history the customer was loaded with is stored but was never monitored as a batch.
    assert listed.loc["history", "state"] == "unmeasured"

    shown = cli("batches", CUSTOMER, "--json", home=platform.home.root, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    rows = {row["batch_id"]: row for row in json.loads(shown.stdout)}
    assert rows[INFINITE]["state"] == "quarantined" and rows[INFINITE]["column"] == "distance_km"
    assert rows[GOOD]["state"] == "ok"


def test_release_refuses_rows_that_still_fail_then_marks_corrected_rows_ok_and_measures_them(poisoned):
    platform, runner, spec, _ = poisoned

    with pytest.raises(batches.BatchError) as still:
        runner.release_batch(spec, INFINITE, by="test")
    assert str(still.value).startswith(
        f"batch '{INFINITE}' of {CUSTOMER} still fails {FINITE_RULE} on column 'distance_km' (values must be finite)"
    )
    with pytest.raises(batches.BatchError, match="is not quarantined"):
        runner.release_batch(spec, GOOD, by="test")

    # Corrected by hand in the warehouse; a corrected file (`ingest --replace`) is cleared by the check itself.
    platform.warehouse.execute(
        f"update {quote(spec.landing_table)} set \"distance_km\" = 1.0 "
        f"where {quote(BATCH_COLUMN)} = ? and isinf(\"distance_km\")",
        [INFINITE],
    )
    record, run = runner.release_batch(spec, INFINITE, by="test")

    assert record.state == BatchState.OK and record.by == "test"
    assert run is not None and run.success, run
    assert INFINITE not in batches.quarantined_batches(platform.warehouse, CUSTOMER)
    assert monitoring.batch_measured(platform.warehouse, CUSTOMER, INFINITE, record.rows)
    released = alerts.history(platform.warehouse, CUSTOMER, batches.BATCH_RELEASED)
    assert released["message"].str.contains(f"batch {INFINITE} released by test").any()


def test_drop_deletes_the_rows_and_what_was_measured_and_records_it(poisoned, tmp_path):
    platform, _, spec, _ = poisoned
    assert landing_ids(platform, spec, FUTURE)

    dropped = cli("batches", CUSTOMER, "--drop", FUTURE, home=platform.home.root, cwd=tmp_path)

    assert dropped.returncode == 0, dropped.stderr
    assert f"{CUSTOMER}: batch {FUTURE} dropped: " in dropped.stdout
    assert not landing_ids(platform, spec, FUTURE)
    for table in (monitoring.PREDICTIONS_TABLE, monitoring.DRIFT_TABLE, monitoring.METRICS_TABLE):
        assert platform.warehouse.query(f"select * from {quote(table)} where batch_id = ?", [FUTURE]).empty
    listed = batches.list_batches(platform.warehouse, spec).set_index("batch_id")
    assert listed.loc[FUTURE, ["state", "rows", "column"]].tolist() == ["dropped", 0, spec.timestamp_column]
    # Other tests of this module quarantine and release batches of their own: only this one is asserted.
    assert FUTURE not in batches.quarantined_batches(platform.warehouse, CUSTOMER)
    recorded = alerts.history(platform.warehouse, CUSTOMER, batches.BATCH_DROPPED)
    assert len(recorded) == 1 and recorded["message"].iloc[0].startswith(f"batch {FUTURE} dropped by cli:")
    assert batches.history(platform.warehouse, CUSTOMER)["state"].tolist()[-1] == BatchState.DROPPED


def test_a_training_that_fails_its_check_names_the_check_column_and_rule(poisoned):
    platform, runner, spec, _ = poisoned
    # Stored without monitoring, so nothing quarantined it: the training's own check is what stops it.
    runner.ingest_and_monitor(spec, infinite_rows(platform.demo[CUSTOMER].batches[3]), "unchecked", monitor=False)

    outcome = runner.train(CUSTOMER, search={"search_iterations": 2, "cv_splits": 2})

    assert not outcome.success
    assert outcome.failure.startswith("check training_data_quality on training_dataset failed: ")
    assert "distance_km (expect_column_values_to_be_between) values must be finite" in outcome.failure


# ---------------------------------------------------------------------------------------------------
# Onboarding refuses what would be quarantined later


def labelled_history(rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "event_time": pd.date_range("2025-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M"),
            "spend": rng.gamma(2.0, 10.0, rows),
            "seats": rng.integers(1, 20, rows),
            "churned": rng.integers(0, 2, rows),
        }
    )


def test_onboarding_refuses_a_future_timestamp_naming_the_column_and_rule():
    history = labelled_history()
    history.loc[7, "event_time"] = "2099-01-01 00:00"

    with pytest.raises(onboarding.OnboardingError) as refused:
        onboarding.prepare(history, onboarding.OnboardingRequest(customer="acme", label="churned"))

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(
        "column 'event_time': 1 timestamp(s) are in the future (rule: timestamps must not be in the future), "
        "e.g. 2099-01-01 00:00:00 after "
    )


@pytest.mark.e2e
def test_onboarding_refuses_an_infinity_in_one_line(tmp_path):
    history = labelled_history()
    history.loc[11, "spend"] = np.inf
    source = tmp_path / "history.csv"
    history.to_csv(source, index=False)

    completed = cli("onboard", "acme", "--source", str(source), "--label", "churned", home=tmp_path / "home", cwd=tmp_path)

    assert_one_line_error(
        completed, "column 'spend': 1 value(s) are infinite (rule: values must be finite), e.g. inf"
    )
