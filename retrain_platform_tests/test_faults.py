"""Commands killed with SIGKILL at chosen points (issue 10: nothing partial, nothing duplicated, nothing stuck):
a training, the scoring of an inference batch and an onboarding, each run as a user runs it, held at a point
of its work, killed there, then run again to completion.

The points are deterministic: a `sitecustomize` module, on the killed command's PYTHONPATH only, wraps a few
platform functions so that the command writes a marker file and waits when it reaches its point (the
command's own code is unchanged). The test waits for the marker, checks that Dagster has the run STARTED,
and kills the command. After the kill and after the rerun it checks what a user relies on: registry aliases,
ledger rows, a batch's stored and predicted rows, run states, and that the customer's retraining is not
blocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from retrain_platform import ledger, monitoring, onboarding
from retrain_platform.customers import list_specs, load_landing, load_spec
from retrain_platform.defs.automation import training_in_flight
from retrain_platform.defs.partitions import customers
from retrain_platform.defs.resources import local_resources
from retrain_platform.demo_data import generate_customer_frame
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.registry import CHALLENGER, CHAMPION
from retrain_platform.settings import Home
from retrain_platform.warehouse import quote
from retrain_platform_tests.conftest import cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CUSTOMER = "lumen-streaming"
CHUNK_ROWS = 200
BATCH_ROWS = 1_000  # five chunks
HOLD_SECONDS = 120

# Imported by every Python process started with its folder on PYTHONPATH: the killed command only.
# RETRAIN_FAULT_POINT names where it stops; RETRAIN_FAULT_MARKER is the file it writes on arriving there.
HOOK = textwrap.dedent(
    """
    import os
    import pathlib
    import time

    POINT = os.environ.get("RETRAIN_FAULT_POINT", "")
    MARKER = pathlib.Path(os.environ.get("RETRAIN_FAULT_MARKER", "fault-point-reached"))


    def hold(point):
        if point != POINT:
            return
        MARKER.write_text(str(os.getpid()))
        time.sleep(float(os.environ["RETRAIN_FAULT_HOLD_SECONDS"]))
        raise SystemExit("the fault test never killed this process")


    from retrain_platform import ledger, monitoring
    from retrain_platform.registry import ModelRegistry

    chunk_rows = int(os.environ.get("RETRAIN_FAULT_CHUNK_ROWS", "0"))
    batch_rows = monitoring.batch_rows


    def small_chunks(db, spec, batch_id, rows):
        for written, chunk in enumerate(batch_rows(db, spec, batch_id, min(rows, chunk_rows or rows))):
            hold(f"scored-{written}")  # `written` chunks are in the scoring table
            yield chunk


    monitoring.batch_rows = small_chunks

    measure_batch = monitoring.measure_batch


    def measured(*args, **kwargs):
        hold("measuring")
        return measure_batch(*args, **kwargs)


    monitoring.measure_batch = measured

    log_candidate = ModelRegistry.log_candidate


    def logged(self, *args, **kwargs):
        hold("logging-candidates")  # the training's parent MLflow run is RUNNING
        return log_candidate(self, *args, **kwargs)


    ModelRegistry.log_candidate = logged


    append = ledger.append


    def appended(db, entry):
        hold("ledger")
        return append(db, entry)


    ledger.append = appended

    from retrain_platform import customers, runner

    add_customer_partitions = runner.add_customer_partitions


    def partitioned(*args, **kwargs):
        hold("onboarding-partitions")  # the history is in its landing table
        return add_customer_partitions(*args, **kwargs)


    runner.add_customer_partitions = partitioned

    save_spec = customers.save_spec


    def saved(*args, **kwargs):
        hold("onboarding-spec")  # the history and the partitions are there
        return save_spec(*args, **kwargs)


    customers.save_spec = saved
    """
)


@pytest.fixture(scope="module")
def hook(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fault-hook")
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


@dataclass
class Killed:
    """A command killed at its point: its pid and the Dagster run it had STARTED (if it runs one)."""

    pid: int
    run: dg.DagsterRun | None


def kill_at(point: str, args: list[str], home: Home, hook: Path, job: str | None, env: dict | None = None) -> Killed:
    """Run `retrain-platform ARGS` until it reaches `point`, check that its run of `job` is STARTED, SIGKILL it."""
    marker = home.root / f"fault-{point}.marker"
    marker.unlink(missing_ok=True)
    variables = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
        "RETRAIN_FAULT_POINT": point,
        "RETRAIN_FAULT_MARKER": str(marker),
        "RETRAIN_FAULT_HOLD_SECONDS": str(HOLD_SECONDS),
        **(env or {}),
    }
    process = cli(*args, home=home.root, cwd=home.root, env=variables, background=True)
    deadline, run = time.monotonic() + HOLD_SECONDS, None
    try:
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        reached = marker.exists()
        if reached and job is not None:
            with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
                [run] = instance.get_runs(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.STARTED]))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    assert reached, f"{args} never reached {point} (exit {process.returncode}):\n{stdout}\n{stderr[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    return Killed(process.pid, run)


def run_cli(home: Home, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    completed = cli(*args, home=home.root, cwd=home.root, timeout=timeout)
    assert completed.returncode == 0, f"{args}:\n{completed.stdout}\n{completed.stderr[-3000:]}"
    assert "Traceback" not in completed.stderr
    return completed


def run_status(home: Home, run_id: str) -> dg.DagsterRunStatus:
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        return instance.get_run_by_id(run_id).status


def assert_left_started(home: Home, killed: Killed) -> None:
    """A killed process cannot report its own death: its run is STARTED until the next command looks."""
    assert run_status(home, killed.run.run_id) == dg.DagsterRunStatus.STARTED


def assert_failed_and_not_blocking(home: Home, killed: Killed) -> None:
    """The next command marked the killed run failed, naming its process; nothing postpones the customer's
    retraining (what every sensor and the schedule ask before they retrain it)."""
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert instance.get_run_by_id(killed.run.run_id).status == dg.DagsterRunStatus.FAILURE
        messages = [entry.message or "" for entry in instance.all_logs(killed.run.run_id)]
        assert any(f"(pid {killed.pid}) ended before the run did" in m for m in messages)
        assert instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])) == []
        assert not training_in_flight(instance, CUSTOMER)


@pytest.fixture
def trained_home(trained_customer, copy_platform, tmp_path) -> Home:
    """A copy of the session's trained customer whose home's own Dagster instance (the one the CLI uses) knows
    the customer's partition."""
    with copy_platform(trained_customer(CUSTOMER), tmp_path / "platform") as platform:
        home = platform.home
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions(customers.name, [CUSTOMER])
    return home


def open_stores(home: Home):
    resources = local_resources(home)
    return resources["warehouse"].get_warehouse(), resources["registry"].get_registry()


# ------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("point", ["logging-candidates", "ledger"])
def test_a_training_killed_at_any_point_changes_nothing_and_the_next_one_completes(trained_home, hook, point):
    home = trained_home
    warehouse, registry = open_stores(home)
    model = f"retrain-{CUSTOMER}"
    champion, challenger = (
        registry.alias_version(model, CHAMPION),
        registry.alias_version(model, CHALLENGER),
    )
    versions, rows = registry.versions(model), len(ledger.history(warehouse))

    killed = kill_at(point, ["train", CUSTOMER], home, hook, job="train_customer")

    # Nothing a user relies on moved: no alias, no ledger row; at most a version nothing points to.
    assert registry.alias_version(model, CHAMPION) == champion
    assert registry.alias_version(model, CHALLENGER) == challenger
    assert len(ledger.history(warehouse)) == rows
    assert len(registry.versions(model)) == len(versions) + (point != "logging-candidates")
    assert_left_started(home, killed)

    run_cli(home, "train", CUSTOMER)

    assert_failed_and_not_blocking(home, killed)

    history = ledger.history(warehouse, CUSTOMER)
    assert len(history) == rows + 1
    last = history.iloc[-1]
    assert last["dagster_run_id"] != killed.run.run_id
    # The champion moved only by the completed training's own decision, which the ledger shows.
    assert registry.alias_version(model, CHAMPION) == last["champion_after"]
    assert last["champion_after"] == champion or last["action"] == "promote"
    # The challenger is the completed training's version, which has a ledger row.
    assert registry.alias_version(model, CHALLENGER) == last["to_version"]
    client = registry.client
    experiment = client.get_experiment_by_name(f"retrain/{CUSTOMER}").experiment_id
    assert client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'") == []
    if point == "logging-candidates":  # killed inside its MLflow run: the next training ended it
        killed_runs = client.search_runs([experiment], filter_string=f"tags.dagster_run_id = '{killed.run.run_id}'")
        assert killed_runs and {run.info.status for run in killed_runs} == {"KILLED"}


# -------------------------------------------------------------------------------------------------- scoring


def batch_file(demo_data, folder: Path) -> tuple[Path, pd.DataFrame]:
    frame = pd.concat(demo_data[CUSTOMER].batches[:2], ignore_index=True).head(BATCH_ROWS)
    assert len(frame) == BATCH_ROWS and frame["subscriber_id"].is_unique
    path = folder / "week.csv"
    frame.to_csv(path, index=False)
    return path, frame


def predictions(warehouse, batch_id: str, table: str = monitoring.PREDICTIONS_TABLE) -> pd.DataFrame:
    if not warehouse.table_exists(table):
        return pd.DataFrame(columns=["model_role", "row_id"])
    return warehouse.query(
        f'select "model_role", "row_id" from {quote(table)} where "customer" = ? and "batch_id" = ?',
        [CUSTOMER, batch_id],
    )


def assert_whole(scored: pd.DataFrame, ids: pd.Series) -> None:
    """Every role scored every row of the batch exactly once."""
    assert len(scored), "no predictions"
    for role, rows in scored.groupby("model_role"):
        assert rows["row_id"].is_unique, role
        assert sorted(rows["row_id"]) == sorted(ids.astype(str)), role


# (point, what the batch's predictions are once the command is killed there)
SCORING_POINTS = [
    ("scored-2", "none"),  # two of five chunks in the scoring table
    ("measuring", "whole"),  # predictions swapped in, drift not measured yet
]


@pytest.mark.parametrize(("point", "left"), SCORING_POINTS, ids=[p for p, _ in SCORING_POINTS])
def test_a_scoring_killed_at_any_point_leaves_no_partial_predictions_and_the_rerun_completes_it(
    trained_home, hook, demo_data, tmp_path, point, left
):
    home = trained_home
    source, frame = batch_file(demo_data, tmp_path)
    command = ["ingest", CUSTOMER, "--source", str(source), "--batch", "week-1"]
    warehouse, _ = open_stores(home)
    spec = load_spec(warehouse, CUSTOMER)

    killed = kill_at(
        point,
        command,
        home,
        hook,
        job="monitor_batch",
        env={"RETRAIN_FAULT_CHUNK_ROWS": str(CHUNK_ROWS)},
    )

    landing = load_landing(warehouse, spec)
    assert (landing[BATCH_COLUMN] == "week-1").sum() == BATCH_ROWS
    scored = predictions(warehouse, "week-1")
    if left == "none":
        assert scored.empty
    else:
        assert_whole(scored, frame["subscriber_id"])
    if point.startswith("scored-"):
        # The kill came half way: two chunks per role were written to the scoring table.
        leftovers = predictions(warehouse, "week-1", monitoring.SCORING_TABLE)
        assert len(leftovers) == 2 * CHUNK_ROWS * leftovers["model_role"].nunique()
    assert not monitoring.batch_measured(warehouse, CUSTOMER, "week-1", BATCH_ROWS)
    assert_left_started(home, killed)

    rerun = run_cli(home, *command)

    assert_failed_and_not_blocking(home, killed)

    assert "week-1" in rerun.stdout
    landing = load_landing(warehouse, spec)
    assert (landing[BATCH_COLUMN] == "week-1").sum() == BATCH_ROWS
    assert landing["subscriber_id"].is_unique
    assert_whole(predictions(warehouse, "week-1"), frame["subscriber_id"])
    assert predictions(warehouse, "week-1", monitoring.SCORING_TABLE).empty
    assert monitoring.batch_measured(warehouse, CUSTOMER, "week-1", BATCH_ROWS)


# ----------------------------------------------------------------------------------------------- onboarding


@pytest.fixture
def history_file(tmp_path) -> Path:
    path = tmp_path / "acme.csv"
    generate_customer_frame(CUSTOMER, 1_200, start="2026-05-01", end="2026-08-01", rng=3).to_csv(path, index=False)
    return path


def onboard_command(source: Path) -> list[str]:
    return [
        "onboard",
        "acme",
        "--source",
        str(source),
        "--label",
        "churned",
        "--id",
        "subscriber_id",
        "--mode",
        "auto",
    ]


@pytest.mark.parametrize("point", ["onboarding-partitions", "onboarding-spec"])
def test_an_onboarding_killed_before_it_was_recorded_can_be_run_again(
    open_platform, tmp_path, hook, history_file, point
):
    with open_platform(tmp_path / "platform") as platform:
        home = platform.home
    command = onboard_command(history_file)

    kill_at(point, command, home, hook, job=None)

    # Nothing says the customer exists: no record, no spec (a spec without a record reads as onboarded).
    warehouse, registry = open_stores(home)
    assert onboarding.status(warehouse, "acme") is None
    assert "acme" not in {spec.customer for spec in list_specs(warehouse)}
    assert registry.alias_version("retrain-acme", CHAMPION) is None

    rerun = run_cli(home, *command)

    assert "acme: 1,200 rows" in rerun.stdout
    assert "the earlier landing table is kept as" in rerun.stdout  # the killed attempt's, renamed
    assert onboarding.status(warehouse, "acme")["status"] == onboarding.REQUESTED
    landing = load_landing(warehouse, load_spec(warehouse, "acme"))
    assert len(landing) == 1_200 and landing["subscriber_id"].is_unique
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert instance.has_dynamic_partition(customers.name, "acme")
        assert instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])) == []
