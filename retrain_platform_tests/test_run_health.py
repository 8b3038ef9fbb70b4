"""A command killed or stopped in the middle of a run: the run does not stay STARTED, the customer's
retraining is not postponed forever, and the MLflow runs a killed training left RUNNING are ended."""

import os
import signal
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from retrain_platform.defs.automation import training_in_flight
from retrain_platform.defs.partitions import customers
from retrain_platform.defs.run_health import WORKER_TAG, fail_dead_runs

CUSTOMER = "lumen-streaming"


def start_training(home) -> subprocess.Popen:
    env = {**os.environ, "RETRAIN_HOME": str(home.root), "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false"}
    env.pop("DAGSTER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-m", "retrain_platform.cli", "train", CUSTOMER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=home.root,
    )


def wait_until_a_step_runs(home, process: subprocess.Popen, timeout: float = 120) -> dg.DagsterRun:
    """The training run once its `candidate_models` step has started (the longest step: a search)."""
    deadline = time.monotonic() + timeout
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            for run in runs:
                steps = instance.get_run_step_stats(run.run_id)
                if any(step.step_key == "candidate_models" for step in steps):
                    return run
            time.sleep(0.1)
    raise AssertionError("the training never reached candidate_models")


@pytest.fixture
def platform_home(open_platform, tmp_path):
    with open_platform(tmp_path / "platform") as platform:
        platform.load_customer(CUSTOMER)
        home = platform.home
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        instance.add_dynamic_partitions(customers.name, [CUSTOMER])
    return home


@pytest.mark.e2e
def test_a_killed_training_is_marked_failed_and_does_not_block_the_next(platform_home):
    process = start_training(platform_home)
    run = wait_until_a_step_runs(platform_home, process)
    assert run.tags[WORKER_TAG].split(":")[1] == str(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    with dg.DagsterInstance.from_config(str(platform_home.dagster_home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # nobody told Dagster
        # What every sensor asks before it retrains this customer: it used to say "in flight" forever.
        assert not training_in_flight(instance, CUSTOMER)
        failed = instance.get_run_by_id(run.run_id)
        assert failed.status == dg.DagsterRunStatus.FAILURE
        messages = [entry.message for entry in instance.all_logs(run.run_id)]
        assert any(f"(pid {process.pid}) ended before the run did" in (m or "") for m in messages)
        assert fail_dead_runs(instance) == []  # once is enough

    again = start_training(platform_home)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.e2e
def test_a_terminated_training_stops_with_one_line_and_its_run_failed(platform_home):
    process = start_training(platform_home)
    run = wait_until_a_step_runs(platform_home, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"interrupted: the run in progress (run {run.run_id}) was marked failed; run the command again" in stderr
    assert "Traceback" not in stderr and "Stack Trace" not in stderr
    with dg.DagsterInstance.from_config(str(platform_home.dagster_home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE


def test_a_run_of_another_host_or_a_live_process_is_left_alone(instance):
    alive = dg.DagsterRun(job_name="train_customer", run_id="a" * 32, status=dg.DagsterRunStatus.STARTED,
                          tags={WORKER_TAG: f"{socket.gethostname()}:{os.getpid()}:"})  # fmt: skip
    elsewhere = dg.DagsterRun(job_name="train_customer", run_id="b" * 32, status=dg.DagsterRunStatus.STARTED,
                              tags={WORKER_TAG: "another-host:1:"})  # fmt: skip
    for run in (alive, elsewhere):
        instance.add_run(run)
    assert fail_dead_runs(instance) == []
    assert {instance.get_run_by_id(r.run_id).status for r in (alive, elsewhere)} == {dg.DagsterRunStatus.STARTED}


def test_mlflow_runs_left_running_by_a_finished_dagster_run_are_ended(registry):
    with registry.start_training_run("acme", run_name="killed", tags={"dagster_run_id": "dead-run"}):
        pass
    client = registry.client
    experiment = client.get_experiment_by_name("retrain/acme").experiment_id
    [left] = client.search_runs([experiment])
    client.update_run(left.info.run_id, status="RUNNING")  # what a SIGKILL in the middle leaves
    with registry.start_training_run("acme", run_name="live", tags={"dagster_run_id": "live-run"}):
        live = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
        assert len(live) == 2
        closed = registry.close_abandoned_runs("acme", lambda run_id: run_id == "dead-run")
    assert closed == [left.info.run_id]
    assert client.get_run(left.info.run_id).info.status == "KILLED"


def test_a_step_is_retried_when_a_file_was_busy_and_only_then():
    import duckdb

    from retrain_platform.defs.training import retry_when_busy

    attempts = []

    @dg.asset
    @retry_when_busy
    def busy_once(context: dg.AssetExecutionContext) -> int:
        attempts.append(context.retry_number)
        if len(attempts) == 1:
            raise duckdb.IOException('Could not set lock on file "warehouse.duckdb"')
        return len(attempts)

    @dg.asset
    @retry_when_busy
    def broken(context: dg.AssetExecutionContext) -> int:
        attempts.append("broken")
        raise ValueError("a real error")

    assert dg.materialize([busy_once], raise_on_error=False).success
    assert attempts == [0, 1]
    assert not dg.materialize([broken], raise_on_error=False).success
    assert attempts[2:] == ["broken"]  # not retried
