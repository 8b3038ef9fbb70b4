"""Batch integrity (issue 10, "Real files, real faults", cases 13, 3, 7 and 6).

- 13: a batch id names one file's rows. A second file under a used batch id is refused, naming the batch id
  and `--replace`; `--replace` swaps the batch's rows, and the monitoring that follows replaces its
  predictions, drift statistics and metrics. A batch re-sent with changed labels is re-measured.
- 3: an interrupted ingest (part of the file stored, or the rows stored but the monitoring never finished) is
  completed by running the same ingest again.
- 7: two processes ingesting the same rows under two batch ids store each id once: the customer's ingest lock
  makes the second wait, and it then finds the ids stored.
- 6: a webhook's credentials travel as a Basic Authorization header, and neither they nor the URL reach a log,
  the alerts table or an exception's text.

The core is tested in process on a fresh warehouse; the runner on a copy of a home where the customer is
trained once per module; the CLI as a user runs it, in subprocesses.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from retrain_platform import alerts, monitoring
from retrain_platform.customers import load_spec
from retrain_platform.defs.resources import AlertChannel
from retrain_platform.ingest import (
    BATCH_COLUMN,
    HISTORY_BATCH,
    IngestError,
    batch_ids,
    batch_partition_key,
    ingest,
    ingest_lock,
)
from retrain_platform.registry import CHAMPION, LoggedModel
from retrain_platform.runner import Runner
from retrain_platform.spec import CustomerSpec, complete_spec, parse_spec
from retrain_platform.warehouse import Warehouse, quote

CUSTOMER = "lumen-streaming"  # binary, string ids ("sub-0000001") in `subscriber_id`, label `churned`
BATCH_ROWS = 500  # the demo batches' size in tests (conftest)
PASSWORD = "Pl4nted-s3cret"


# ---------------------------------------------------------------------------------------------------
# Helpers


def onboard(warehouse: Warehouse, demo_data, *, with_ids: bool = True) -> tuple[CustomerSpec, object]:
    """The customer's history in its landing table (the `history` batch) and its spec; without ids, the id
    column is dropped everywhere, as for a customer onboarded without `--id`."""
    customer = demo_data[CUSTOMER]
    history = customer.history if with_ids else customer.history.drop(columns=["subscriber_id"])
    spec = complete_spec(parse_spec({**customer.spec, **({} if with_ids else {"id_column": None})}), history)
    warehouse.execute(f"drop table if exists {quote(spec.landing_table)}")
    warehouse.write(spec.landing_table, history.assign(**{BATCH_COLUMN: HISTORY_BATCH}))
    return spec, customer


def without_ids(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["subscriber_id"])


def landing(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    frame = warehouse.query(f"select * from {quote(spec.landing_table)}")
    order = [c for c in (spec.id_column, spec.timestamp_column, *spec.feature_names) if c]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def rows_of(warehouse: Warehouse, spec: CustomerSpec, batch_id: str) -> pd.DataFrame:
    return warehouse.query(f"select * from {quote(spec.landing_table)} where {quote(BATCH_COLUMN)} = ?", [batch_id])


def table_rows(warehouse: Warehouse, table: str, batch_id: str) -> pd.DataFrame:
    sql = f'select * from {quote(table)} where "customer" = ? and "batch_id" = ?'
    return warehouse.query(sql, [CUSTOMER, batch_id])


def served(warehouse: Warehouse, batch_id: str) -> pd.DataFrame:
    """The predictions of the model serving the batch (the champion, or the challenger before one)."""
    predictions = table_rows(warehouse, monitoring.PREDICTIONS_TABLE, batch_id)
    role = monitoring.serving_role(dict.fromkeys(predictions["model_role"]))
    return predictions[predictions["model_role"] == role]


def assert_measured_exactly(warehouse: Warehouse, spec: CustomerSpec, batch_id: str, ids, labelled: int) -> None:
    """Every row of the batch is scored once by each model, and its drift summary and metrics count them all."""
    ids = set(ids)
    assert set(rows_of(warehouse, spec, batch_id)[spec.id_column]) == ids
    predictions = table_rows(warehouse, monitoring.PREDICTIONS_TABLE, batch_id)
    for role, scored in predictions.groupby("model_role"):
        assert len(scored) == len(ids), role
        assert set(scored["row_id"]) == ids, role
    summary = table_rows(warehouse, monitoring.DRIFT_BATCHES_TABLE, batch_id)
    assert summary[["rows", "labelled_rows"]].values.tolist() == [[len(ids), labelled]]
    statistics = table_rows(warehouse, monitoring.DRIFT_TABLE, batch_id)
    assert not statistics["column"].duplicated().any()
    metrics = table_rows(warehouse, monitoring.METRICS_TABLE, batch_id)
    assert (metrics["rows"] == len(ids)).all() and (metrics["labelled_rows"] == labelled).all()
    assert not metrics[["model_role", "kind", "metric"]].duplicated().any()
    assert set(metrics["kind"]) == ({"realized", "estimated"} if labelled else {"estimated"})
    assert monitoring.batch_measured(warehouse, CUSTOMER, batch_id, len(ids))


def cli_env(home: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "RETRAIN_HOME": str(home),
        "RETRAIN_ENV": "local",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        **extra,
    }
    env.pop("DAGSTER_HOME", None)  # the CLI derives it from the home
    return env


def cli(*args: str, home: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """`python -m retrain_platform.cli ARGS` on `home`, the way a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "retrain_platform.cli", *args],
        capture_output=True, text=True, env=cli_env(home, **env), cwd=home.parent, timeout=timeout,
    )  # fmt: skip


def said(stderr: str) -> list[str]:
    """What the CLI itself wrote to stderr: no Python warnings (two lines each) from imported libraries."""
    lines, source_line_next = [], False
    for line in stderr.splitlines():
        if source_line_next and line.startswith(" "):
            source_line_next = False
            continue
        source_line_next = "Warning: " in line
        if not source_line_next and line.strip():
            lines.append(line)
    return lines


def one_line_error(completed: subprocess.CompletedProcess) -> str:
    assert completed.returncode == 1, completed.stdout + completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    lines = said(completed.stderr)
    assert len(lines) == 1, lines
    return lines[0]


def runner_spec(platform) -> CustomerSpec:
    return load_spec(platform.warehouse, CUSTOMER)


def csv_of(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------------------------------------
# A trained customer, once per module; each test works on a copy of its home


@pytest.fixture(scope="module")
def trained_root(open_platform, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch-integrity")
    with open_platform(root) as platform:
        platform.load_customer(CUSTOMER)
        result = platform.train(CUSTOMER)
        assert result.success
    return root


@pytest.fixture
def trained(trained_root, open_platform, tmp_path):
    """A copy of the trained home with a Dagster instance of its own. The copy's registry still loads the
    models from the original's artifacts, which the module keeps."""
    shutil.copytree(trained_root / "home", tmp_path / "copy" / "home")
    with open_platform(tmp_path / "copy") as platform:
        yield platform


@pytest.fixture
def runner(trained) -> Runner:
    return Runner(trained.defs, trained.instance, charts=False)


# ---------------------------------------------------------------------------------------------------
# 13: a batch id names one file's rows


def test_a_batch_id_holding_other_rows_is_refused_naming_it_and_replace(warehouse, demo_data):
    spec, customer = onboard(warehouse, demo_data)
    first, second = customer.batches[0], customer.batches[1]
    ingest(warehouse, spec, first, "week-1")
    before = landing(warehouse, spec)

    for other, outside in ((second, BATCH_ROWS), (first.head(100), BATCH_ROWS - 100)):
        with pytest.raises(IngestError) as refused:
            ingest(warehouse, spec, other, "week-1")
        assert str(refused.value) == (
            f"batch id 'week-1' of {CUSTOMER} already holds {outside} row(s) that are not in this file: give a new "
            "batch id, or add --replace to replace that batch's rows with this file's"
        )
        pd.testing.assert_frame_equal(landing(warehouse, spec), before)
    assert batch_ids(warehouse, spec) == ["week-1"]


def test_without_ids_the_same_file_is_judged_by_row_content(warehouse, demo_data):
    spec, customer = onboard(warehouse, demo_data, with_ids=False)
    first = without_ids(customer.batches[0])
    # Two equal rows stay two rows: content is matched row for row, not as a set.
    first = pd.concat([first, first.tail(1)], ignore_index=True)
    ingest(warehouse, spec, first.head(200), "week-1")

    completed = ingest(warehouse, spec, first, "week-1")
    assert (completed.new_rows, completed.stored_before, completed.batch_rows) == (len(first) - 200, 200, len(first))
    again = ingest(warehouse, spec, first, "week-1")
    assert (again.new_rows, again.batch_rows) == (0, len(first))
    before = landing(warehouse, spec)

    relabelled = first.copy()
    row = relabelled[spec.label_column].first_valid_index()
    relabelled.loc[row, spec.label_column] = 1 - relabelled.loc[row, spec.label_column]
    for other, outside in ((without_ids(customer.batches[1]), len(first)), (relabelled, 1)):
        with pytest.raises(IngestError) as refused:
            ingest(warehouse, spec, other, "week-1")
        expected = f"batch id 'week-1' of {CUSTOMER} already holds {outside} row(s) that are not in this file: "
        assert str(refused.value).startswith(expected) and "--replace" in str(refused.value)
    pd.testing.assert_frame_equal(landing(warehouse, spec), before)
    assert len(rows_of(warehouse, spec, "week-1")) == len(first)

    replaced = ingest(warehouse, spec, relabelled, "week-1", replace=True)
    assert (replaced.new_rows, replaced.replaced_rows) == (len(first), len(first))
    stored = rows_of(warehouse, spec, "week-1")
    assert len(stored) == len(first)
    assert stored[spec.label_column].sum() == relabelled[spec.label_column].sum()


def test_replace_swaps_the_batch_rows_and_leaves_other_batches_alone(warehouse, demo_data):
    spec, customer = onboard(warehouse, demo_data)
    first, second, third = customer.batches[0], customer.batches[1], customer.batches[2]
    ingest(warehouse, spec, first, "week-1")
    ingest(warehouse, spec, third, "week-3")
    history = rows_of(warehouse, spec, HISTORY_BATCH)
    week3 = rows_of(warehouse, spec, "week-3")

    # The new file repeats 10 rows of week 3: they stay in week 3 (their labels merged), as in any ingest.
    replacement = pd.concat([second, third.head(10)], ignore_index=True)
    summary = ingest(warehouse, spec, replacement, "week-1", replace=True)

    assert (summary.new_rows, summary.replaced_rows, summary.batch_rows) == (len(second), len(first), len(second))
    assert summary.labels_merged == 10 and summary.batches_with_new_labels == ["week-3"]
    assert set(rows_of(warehouse, spec, "week-1")[spec.id_column]) == set(second[spec.id_column])
    stored = landing(warehouse, spec)
    assert not stored[spec.id_column].duplicated().any()
    assert not stored[spec.id_column].isin(first[spec.id_column]).any()  # the replaced rows are gone
    pd.testing.assert_frame_equal(rows_of(warehouse, spec, HISTORY_BATCH), history)
    pd.testing.assert_frame_equal(rows_of(warehouse, spec, "week-3"), week3)


def test_replace_refuses_a_label_file_and_a_file_that_would_empty_the_batch(warehouse, demo_data):
    spec, customer = onboard(warehouse, demo_data)
    first, second = customer.batches[0], customer.batches[1]
    ingest(warehouse, spec, first, "week-1")
    ingest(warehouse, spec, second, "week-2")
    before = landing(warehouse, spec)

    with pytest.raises(IngestError) as refused:
        ingest(warehouse, spec, first[[spec.id_column, spec.label_column]], "week-1", replace=True)
    assert str(refused.value) == (
        "--replace: this file has only ids and labels, which are merged into the rows they name; "
        "replace batch 'week-1' with a file of rows"
    )
    with pytest.raises(IngestError) as refused:
        ingest(warehouse, spec, second, "week-1", replace=True)
    assert str(refused.value) == (
        "--replace: every row of this file is stored in another batch, so batch 'week-1' would be left empty; "
        "nothing was changed"
    )
    pd.testing.assert_frame_equal(landing(warehouse, spec), before)


def test_a_label_file_under_a_used_batch_id_still_merges_its_labels(warehouse, demo_data):
    """A file of ids and labels adds no rows to its batch id, so what that id holds does not matter."""
    spec, customer = onboard(warehouse, demo_data)
    first = customer.batches[0]
    ingest(warehouse, spec, first.drop(columns=[spec.label_column]), "week-1")
    summary = ingest(warehouse, spec, first[[spec.id_column, spec.label_column]].head(50), "week-1")
    assert (summary.new_rows, summary.labels_merged, summary.batches_with_new_labels) == (0, 50, ["week-1"])
    assert int(rows_of(warehouse, spec, "week-1")[spec.label_column].notna().sum()) == 50


def test_replace_without_a_batch_id_is_refused_in_one_line(tmp_path, capsys):
    from retrain_platform import cli as command_line

    assert command_line.main(["ingest", CUSTOMER, "--source", str(tmp_path / "x.csv"), "--replace"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: --replace needs --batch ID: the batch whose rows this file replaces\n"


@pytest.mark.slow
def test_replace_is_measured_anew_replacing_the_batch_predictions_drift_and_metrics(trained, runner):
    spec = runner_spec(trained)
    first, second = trained.demo[CUSTOMER].batches[0], trained.demo[CUSTOMER].batches[1]
    runner.ingest_and_monitor(spec, first.drop(columns=[spec.label_column]), "week-1")
    assert_measured_exactly(trained.warehouse, spec, "week-1", first[spec.id_column], labelled=0)

    outcome = runner.ingest_and_monitor(spec, second, "week-1", replace=True)

    assert outcome.summary.replaced_rows == len(first)
    assert [run.partition for run in outcome.monitored] == [batch_partition_key(CUSTOMER, "week-1")]
    assert all(run.success for run in outcome.monitored)
    assert_measured_exactly(trained.warehouse, spec, "week-1", second[spec.id_column], labelled=len(second))


@pytest.mark.slow
def test_a_batch_sent_again_with_labels_is_re_measured(trained, runner):
    spec = runner_spec(trained)
    batch = trained.demo[CUSTOMER].batches[0]
    runner.ingest_and_monitor(spec, batch.drop(columns=[spec.label_column]), "week-1")
    assert_measured_exactly(trained.warehouse, spec, "week-1", batch[spec.id_column], labelled=0)

    outcome = runner.ingest_and_monitor(spec, batch, "week-1")

    summary = outcome.summary
    assert (summary.new_rows, summary.labels_merged, summary.stored_before) == (0, len(batch), len(batch))
    assert outcome.monitored == []
    assert [(run.job, run.partition, run.success) for run in outcome.remeasured] == [
        ("remeasure_batch", batch_partition_key(CUSTOMER, "week-1"), True)
    ]
    assert_measured_exactly(trained.warehouse, spec, "week-1", batch[spec.id_column], labelled=len(batch))


@pytest.mark.slow
def test_late_labels_for_history_rows_re_measure_no_history_batch(trained, runner):
    """History batches are a backtest (`ingest.is_history_batch`), never re-measured by late labels."""
    spec = runner_spec(trained)
    history = trained.demo[CUSTOMER].history
    outcome = runner.ingest_and_monitor(spec, history[[spec.id_column, spec.label_column]].head(30), "labels-1")
    assert outcome.summary.batches_with_new_labels == [HISTORY_BATCH]
    assert (outcome.monitored, outcome.remeasured) == ([], [])


# ---------------------------------------------------------------------------------------------------
# 3: an interrupted ingest is completed by running it again


@pytest.mark.slow
def test_an_ingest_that_stored_part_of_its_file_is_completed_and_monitored(trained, runner):
    spec = runner_spec(trained)
    batch = trained.demo[CUSTOMER].batches[0]
    ingest(trained.warehouse, spec, batch.head(200), "week-1")  # the process died here: no monitoring

    outcome = runner.ingest_and_monitor(spec, batch, "week-1")

    summary = outcome.summary
    assert (summary.new_rows, summary.stored_before, summary.batch_rows) == (300, 200, len(batch))
    assert [run.success for run in outcome.monitored] == [True]
    assert_measured_exactly(trained.warehouse, spec, "week-1", batch[spec.id_column], labelled=len(batch))


@pytest.mark.slow
def test_a_batch_whose_monitoring_did_not_finish_is_monitored_when_ingested_again(trained, runner):
    spec = runner_spec(trained)
    warehouse = trained.warehouse
    batch = trained.demo[CUSTOMER].batches[0].drop(columns=["churned"])

    stored_only = runner.ingest_and_monitor(spec, batch, "week-1", monitor=False)
    assert stored_only.monitored == [] and not monitoring.batch_measured(warehouse, CUSTOMER, "week-1", len(batch))
    repaired = runner.ingest_and_monitor(spec, batch, "week-1")
    assert repaired.summary.new_rows == 0 and [run.success for run in repaired.monitored] == [True]
    assert_measured_exactly(warehouse, spec, "week-1", batch[spec.id_column], labelled=0)

    # A run killed while it scored: the predictions of 320 rows were written, the rest never.
    kept = batch[spec.id_column].astype(str).head(320).tolist()
    warehouse.execute(
        f'delete from {quote(monitoring.PREDICTIONS_TABLE)} where "customer" = ? and "batch_id" = ? '
        f'and "row_id" not in ({", ".join("?" for _ in kept)})',
        [CUSTOMER, "week-1", *kept],
    )
    assert len(served(warehouse, "week-1")) == 320
    assert not monitoring.batch_measured(warehouse, CUSTOMER, "week-1", len(batch))
    repaired = runner.ingest_and_monitor(spec, batch, "week-1")
    assert [run.success for run in repaired.monitored] == [True]
    assert_measured_exactly(warehouse, spec, "week-1", batch[spec.id_column], labelled=0)

    # Complete now: the same file again stores nothing and runs nothing.
    done = runner.ingest_and_monitor(spec, batch, "week-1")
    assert (done.summary.new_rows, done.monitored, done.remeasured) == (0, [], [])


# ---------------------------------------------------------------------------------------------------
# 13 and 3 from the command line


@pytest.mark.slow
@pytest.mark.e2e  # a whole command-line journey in subprocesses: the end-to-end lane
def test_cli_completes_an_interrupted_ingest_refuses_another_file_and_replaces_with_replace(trained, tmp_path):
    spec = runner_spec(trained)
    first, second = trained.demo[CUSTOMER].batches[0], trained.demo[CUSTOMER].batches[1]
    home = trained.home.root
    ingest(trained.warehouse, spec, first.head(200), "week-1")  # the earlier ingest died after 200 rows

    # 3: the same command again completes the batch and monitors it (it used to be a silent no-op).
    completed = cli("ingest", CUSTOMER, "--source", str(csv_of(first, tmp_path / "first.csv")), "--batch", "week-1",
                    home=home)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert lines[:2] == [
        f"{CUSTOMER}: batch week-1: 300 new rows, 200 labels merged",
        "  completed the batch: it held 200 of this file's rows before",
    ]
    assert lines[2].startswith(f"  monitored {CUSTOMER}.week-1: run ") and lines[2].endswith(" succeeded")
    assert_measured_exactly(trained.warehouse, spec, "week-1", first[spec.id_column], labelled=len(first))
    before = landing(trained.warehouse, spec)

    # 13: another file under the same batch id is refused in one line, and nothing changes.
    source = csv_of(second, tmp_path / "second.csv")
    refused = cli("ingest", CUSTOMER, "--source", str(source), "--batch", "week-1", home=home)
    assert one_line_error(refused) == (
        f"error: batch id 'week-1' of {CUSTOMER} already holds {BATCH_ROWS} row(s) that are not in this file: "
        "give a new batch id, or add --replace to replace that batch's rows with this file's"
    )
    pd.testing.assert_frame_equal(landing(trained.warehouse, spec), before)
    assert_measured_exactly(trained.warehouse, spec, "week-1", first[spec.id_column], labelled=len(first))

    # With --replace the batch's rows become the file's, measured anew.
    replaced = cli("ingest", CUSTOMER, "--source", str(source), "--batch", "week-1", "--replace", home=home)
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    lines = replaced.stdout.splitlines()
    assert lines[:2] == [
        f"{CUSTOMER}: batch week-1: {BATCH_ROWS} new rows, 0 labels merged",
        f"  replaced the batch's {BATCH_ROWS} earlier rows; their predictions, drift statistics and metrics "
        "were removed",
    ]
    assert lines[2].startswith(f"  monitored {CUSTOMER}.week-1: run ") and lines[2].endswith(" succeeded")
    assert_measured_exactly(trained.warehouse, spec, "week-1", second[spec.id_column], labelled=len(second))
    assert not landing(trained.warehouse, spec)[spec.id_column].isin(first[spec.id_column]).any()


# ---------------------------------------------------------------------------------------------------
# 7: a customer's ingests take turns

# Imports everything first and says so with a file, then waits for the go file: the two processes start
# ingesting together. The look for stored ids takes 2 s more, as on a large landing table, so without a lock
# both would look before either inserts.
RACER = """
import sys, time
from pathlib import Path
from retrain_platform import cli, ingest
import retrain_platform.definitions, retrain_platform.runner

look_up = ingest._stored_by_id
def slow_look_up(*args, **kwargs):
    found = look_up(*args, **kwargs)
    time.sleep(2)
    return found
ingest._stored_by_id = slow_look_up

ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.e2e  # command-line processes end to end: the end-to-end lane
def test_two_processes_ingesting_the_same_rows_under_two_batch_ids_store_each_id_once(trained, tmp_path):
    spec = runner_spec(trained)
    batch = trained.demo[CUSTOMER].batches[0]
    source = csv_of(batch, tmp_path / "same.csv")
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / f"ready-{batch_id}"), str(go), "ingest", CUSTOMER,
             "--source", str(source), "--batch", batch_id, "--no-monitor"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(trained.home.root),
            cwd=tmp_path,
        )  # fmt: skip
        for batch_id in ("copy-a", "copy-b")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{b}").exists() for b in ("copy-a", "copy-b")) and time.monotonic() < deadline:
        assert all(racer.poll() is None for racer in racers), [racer.communicate() for racer in racers]
        time.sleep(0.05)
    go.touch()
    outputs = [racer.communicate(timeout=240) for racer in racers]

    for racer, (stdout, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stdout + stderr[-3000:]
    stored = landing(trained.warehouse, spec)
    assert not stored[spec.id_column].duplicated().any()
    counts = sorted(len(rows_of(trained.warehouse, spec, b)) for b in ("copy-a", "copy-b"))
    assert counts == [0, len(batch)]
    # The one that came second may first have said it waits for the lock.
    news = sorted(stdout.splitlines()[-1].split(": ", 2)[2] for stdout, _ in outputs)
    assert news == [f"0 new rows, {len(batch)} labels merged", f"{len(batch)} new rows, 0 labels merged"]


@pytest.mark.slow
def test_an_ingest_waits_for_the_customer_lock_then_finds_the_ids_stored(trained, tmp_path):
    spec = runner_spec(trained)
    batch = trained.demo[CUSTOMER].batches[0]
    source = csv_of(batch, tmp_path / "same.csv")
    home = trained.home.root
    out = tmp_path / "second.out"
    with ingest_lock(home, CUSTOMER):
        with open(out, "w") as stdout:
            second = subprocess.Popen(
                [sys.executable, "-m", "retrain_platform.cli", "ingest", CUSTOMER, "--source", str(source),
                 "--batch", "second", "--no-monitor"],
                stdout=stdout, stderr=subprocess.PIPE, text=True, env=cli_env(home), cwd=tmp_path,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while "waiting" not in out.read_text() and time.monotonic() < deadline and second.poll() is None:
            time.sleep(0.2)
        assert second.poll() is None, second.stderr.read()
        assert out.read_text() == (
            f"{CUSTOMER}: another ingest of this customer is running; waiting for it "
            f"(lock {home / 'logs' / f'ingest-{CUSTOMER}.lock'})\n"
        )
        assert rows_of(trained.warehouse, spec, "second").empty
        first = ingest(trained.warehouse, spec, batch, "first")  # the ingest holding the lock
        assert first.new_rows == len(batch)
    _, stderr = second.communicate(timeout=240)

    assert second.returncode == 0, stderr[-3000:]
    assert out.read_text().splitlines()[1] == f"{CUSTOMER}: batch second: 0 new rows, {len(batch)} labels merged"
    stored = landing(trained.warehouse, spec)
    assert not stored[spec.id_column].duplicated().any()
    assert len(rows_of(trained.warehouse, spec, "first")) == len(batch)
    assert "second" not in batch_ids(trained.warehouse, spec)


# ---------------------------------------------------------------------------------------------------
# 6: a webhook's secrets stay secret


class Hook:
    """A webhook on a free localhost port that records each request; paths under /fail answer 500."""

    def __init__(self):
        self.requests: list[dict] = []
        received = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the standard library's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
                self.send_response(500 if self.path.startswith("/fail") else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, user: str = "alerts-bot", password: str = PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.server.server_port}{path}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_webhook_credentials_go_as_a_basic_header_and_no_secret_reaches_a_log_table_or_error(warehouse):
    log = logging.getLogger("test_batch_integrity.webhook")
    log.propagate = False
    captured = Captured()
    log.addHandler(captured)
    channel_token = "T0KEN-in-the-path"
    alert = alerts.Alert(datetime(2026, 12, 1), CUSTOMER, alerts.DRIFT, "drift in 3 of 10 features")
    try:
        with Hook() as hook:
            channel = AlertChannel(webhook_url=hook.url(f"/hooks/{channel_token}?channel=ops"), timeout_seconds=5)
            assert channel.send(warehouse, alert, log=log) is True
            failing = hook.url(f"/fail/{channel_token}")
            assert alerts.record(warehouse, alert, failing, log=log) is False
            errors = []
            for url in (failing, hook.url("/x").replace(str(hook.server.server_port), "1"), f"ftp://u:{PASSWORD}@h/x"):
                with pytest.raises(alerts.WebhookError) as raised:
                    alerts.post(url, alert, timeout=5)
                errors.append("".join(traceback.format_exception(raised.value)))
    finally:
        log.removeHandler(captured)

    assert [(r["path"], r["authorization"]) for r in hook.requests] == [
        (f"/hooks/{channel_token}?channel=ops", basic("alerts-bot", PASSWORD)),
        (f"/fail/{channel_token}", basic("alerts-bot", PASSWORD)),
        (f"/fail/{channel_token}", basic("alerts-bot", PASSWORD)),
    ]
    assert hook.requests[0]["body"]["kind"] == alerts.DRIFT
    assert captured.lines[-1] == f"alert webhook at {hook.host} failed: HTTP 500; the alert is in the alerts table"
    assert f"alert webhook at {hook.host} failed: HTTP 500" in errors[0]
    assert "alert webhook at 127.0.0.1:1 failed: " in errors[1]
    assert "alert webhook at h: the URL must start with http:// or https:// and name a host" in errors[2]
    stored = alerts.history(warehouse).to_string()
    for secret in (PASSWORD, channel_token):
        assert secret not in stored
        assert all(secret not in line for line in captured.lines)
        assert all(secret not in error for error in errors)


def test_a_password_with_reserved_characters_is_sent_decoded():
    with Hook() as hook:
        alert = alerts.Alert(datetime(2026, 12, 1), None, alerts.DRIFT, "drift")
        alerts.post(hook.url("/hook", user="ops%40acme", password="p%3Ass%2Fw"), alert)
    assert hook.requests[0]["authorization"] == basic("ops@acme", "p:ss/w")


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_rollback_sends_its_alert_with_the_credentials_as_a_header_and_writes_no_secret(trained):
    """The webhook answers 500: the alert still arrives with its header, and the failure names the host only."""
    spec = runner_spec(trained)
    registry = trained.registry
    # A second version of the same model, made champion, gives `rollback` something to undo.
    first = registry.client.get_model_version(spec.model_name, "1")
    second = registry.register(spec.model_name, LoggedModel(run_id=first.run_id, model_uri=first.source))
    registry.promote(spec.model_name, second)
    home = trained.home.root

    with Hook() as hook:
        completed = cli(
            "rollback", CUSTOMER, "--reason", "bad week", home=home, RETRAIN_ALERT_WEBHOOK_URL=hook.url("/fail/hook")
        )

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert f"{CUSTOMER}: champion rolled back {second} -> 1" in completed.stdout
    assert f"alert webhook at {hook.host} failed: HTTP 500; the alert is in the alerts table" in completed.stderr
    assert [(r["path"], r["authorization"], r["body"]["kind"]) for r in hook.requests] == [
        ("/fail/hook", basic("alerts-bot", PASSWORD), alerts.ROLLBACK)
    ]
    assert registry.alias_version(spec.model_name, CHAMPION) == "1"
    assert "bad week" in alerts.history(trained.warehouse, CUSTOMER, alerts.ROLLBACK)["message"].iloc[-1]
    assert PASSWORD not in completed.stdout + completed.stderr
    leaked = [path for path in home.rglob("*") if path.is_file() and PASSWORD.encode() in path.read_bytes()]
    assert leaked == []
