"""`retrain-platform onboard` as a user runs it, with the Dagster daemon it starts: one customer from CSV (auto mode)
and one from Parquet (approve mode, the default) onboarded at the same time, each through two real asset
backfills, one run per stage; then offboarding and onboarding the same id again."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus

from retrain_platform import ledger, onboarding
from retrain_platform.defs.onboarding import (
    HISTORY_STAGE,
    ONBOARDING_TAG,
    PROFILES_TABLE,
    STAGE_TAG,
    TRAINING_STAGE,
)
from retrain_platform.defs.resources import local_resources
from retrain_platform.demo_data import generate_customer_frame
from retrain_platform.monitoring import DRIFT_BATCHES_TABLE, PREDICTIONS_TABLE
from retrain_platform.registry import CHALLENGER, CHAMPION
from retrain_platform.settings import CUSTOMER_TAG, Home
from retrain_platform_tests.conftest import assert_one_line_error, cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = 1_500
WAIT_SECONDS = 480


@dataclass
class Onboarded:
    root: Path
    home: Home
    sources: dict[str, Path]
    outputs: dict[str, subprocess.CompletedProcess]
    history_rows: dict[str, int]
    daemon_left: bool


@pytest.fixture(scope="module")
def onboarded(tmp_path_factory, fast_backfills) -> Onboarded:
    root = tmp_path_factory.mktemp("onboarding")
    home = Home(root / "home").ensure()
    csv, parquet = root / "acme.csv", root / "globex.parquet"
    generate_customer_frame("lumen-streaming", ROWS, start="2026-05-01", end="2026-08-01", rng=1).to_csv(
        csv, index=False
    )
    generate_customer_frame("corner-market", ROWS, start="2026-05-01", end="2026-08-01", rng=2).to_parquet(
        parquet, index=False
    )
    commands = {
        "acme": [
            "onboard",
            "acme",
            "--source",
            str(csv),
            "--label",
            "churned",
            "--id",
            "subscriber_id",
            "--mode",
            "auto",
        ],
        "globex": ["onboard", "globex", "--source", str(parquet), "--label", "is_fraud", "--id", "order_id"],
    }
    # No daemon runs: the two commands, started together, must share the one the first of them starts.
    processes = {
        name: cli(
            *command, "--batch-period", "month", "--wait", "--home", str(home.root), home=home.root, cwd=root,
            env=fast_backfills, background=True,
        )
        for name, command in commands.items()
    }
    outputs = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=WAIT_SECONDS)
            outputs[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        pid_path = home.root / "logs" / "daemon.pid"
        daemon_left = pid_path.exists()
        if daemon_left:
            os.killpg(int(pid_path.read_text()), signal.SIGKILL)
    daemon_log = home.root / "logs" / "daemon.log"
    for name, output in outputs.items():
        assert output.returncode == 0, (
            f"{name}:\n{output.stdout}\n{output.stderr[-3000:]}\n{daemon_log.read_text()[-3000:]}"
        )
    return Onboarded(root, home, {"acme": csv, "globex": parquet}, outputs, {"acme": ROWS, "globex": ROWS}, daemon_left)


def backfills_of(instance: dg.DagsterInstance, customer: str) -> dict[str, object]:
    found = instance.get_backfills(filters=BulkActionsFilter(tags={CUSTOMER_TAG: customer}))
    return {backfill.tags[STAGE_TAG]: backfill for backfill in found if ONBOARDING_TAG in backfill.tags}


def test_csv_and_parquet_customers_are_onboarded_through_two_backfills_of_one_run_each(onboarded):
    home = onboarded.home
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        for customer in ("acme", "globex"):
            stages = backfills_of(instance, customer)
            assert set(stages) == {TRAINING_STAGE, HISTORY_STAGE}
            for stage, backfill in stages.items():
                assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, (customer, stage)
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))
                # The history's batches are scored in one run (BackfillPolicy.single_run), not one per batch.
                assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.SUCCESS], (customer, stage)
                assert runs[0].dagster_run.tags[CUSTOMER_TAG] == customer
            measured = instance.get_materialized_partitions(dg.AssetKey("drift_report"))
            assert sorted(k for k in measured if k.startswith(f"{customer}.")) == [
                f"{customer}.history-2026-05",
                f"{customer}.history-2026-06",
                f"{customer}.history-2026-07",
            ]
            assert customer in instance.get_materialized_partitions(dg.AssetKey("data_profile"))
        check = dg.AssetCheckKey(dg.AssetKey("inference_batch"), "inference_batch_quality")
        executions = instance.event_log_storage.get_asset_check_execution_history(check, limit=10)
        assert any(e.status.value == "SUCCEEDED" for e in executions)

    resources = local_resources(home)
    warehouse, registry = resources["warehouse"].get_warehouse(), resources["registry"].get_registry()
    assert onboarding.status(warehouse, "acme")["status"] == onboarding.READY
    assert onboarding.status(warehouse, "globex")["status"] == onboarding.READY
    profiles = warehouse.query(f'select customer from "{PROFILES_TABLE}" order by customer')
    assert profiles["customer"].tolist() == ["acme", "globex"]

    # auto mode: the first model is the champion; its ledger row says onboarding caused it.
    assert registry.alias_version("retrain-acme", CHAMPION) == "1"
    (row,) = ledger.history(warehouse, "acme").itertuples()
    assert row.action == "promote" and row.trigger.startswith("onboarding: acme@")
    # approve mode (the default): no champion until a person approves; the history is scored by the challenger.
    assert registry.alias_version("retrain-globex", CHAMPION) is None
    assert registry.alias_version("retrain-globex", CHALLENGER) == "1"
    assert ledger.history(warehouse, "globex")["action"].tolist() == ["await_approval"]
    roles = warehouse.query(
        f'select customer, model_role, count(*) as n from "{PREDICTIONS_TABLE}" group by 1, 2 order by 1'
    )
    assert roles.values.tolist() == [["acme", "champion", ROWS], ["globex", "challenger", ROWS]]
    drift = warehouse.query(f'select customer, count(*) as n from "{DRIFT_BATCHES_TABLE}" group by 1 order by 1')
    assert drift.values.tolist() == [["acme", 3], ["globex", 3]]

    acme, globex = onboarded.outputs["acme"].stdout, onboarded.outputs["globex"].stdout
    assert (
        "onboarding of acme: ready" in acme
        and "first model: version 1, verdict PROMOTE, action promote; champion 1" in acme
    )
    assert "training backfill" in acme and "COMPLETED_SUCCESS, 1 run(s) (SUCCESS)" in acme
    assert "3 monthly batches: history-2026-05 .. history-2026-07" in acme
    # The backtest says which history batches the first model was trained on, next to its realized metric.
    assert "backtest by history batch (roc_auc realized" in acme
    batch_lines = {line.split()[0]: line for line in acme.splitlines() if line.strip().startswith("history-2026-")}
    assert "in training" in batch_lines["history-2026-05"] and "holdout" in batch_lines["history-2026-07"]
    assert all(" roc_auc 0." in line for line in batch_lines.values()), batch_lines
    assert "next: review data_profile and evaluation_report in the UI, then `retrain-platform approve globex`" in globex


def test_the_two_waiting_commands_shared_one_daemon_and_the_last_one_out_stopped_it(onboarded):
    started = [name for name, output in onboarded.outputs.items() if "started a Dagster daemon" in output.stdout]
    assert len(started) == 1, {name: output.stdout for name, output in onboarded.outputs.items()}
    assert not onboarded.daemon_left
    home = str(onboarded.home.root)
    still_running = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == home:
                still_running.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    assert still_running == []
    with dg.DagsterInstance.from_config(str(onboarded.home.dagster_home)) as instance:
        assert instance.get_daemon_heartbeats() == {}  # wiped, so the next command does not wait on a dead daemon


def test_the_second_customers_backfill_leaves_the_first_customers_models_and_ledger_alone(onboarded):
    resources = local_resources(onboarded.home)
    warehouse, registry = resources["warehouse"].get_warehouse(), resources["registry"].get_registry()
    with dg.DagsterInstance.from_config(str(onboarded.home.dagster_home)) as instance:
        runs = instance.get_run_records()
        by_customer = {
            name: [r for r in runs if r.dagster_run.tags.get(CUSTOMER_TAG) == name] for name in ("acme", "globex")
        }
    assert len(runs) == 4 and all(len(found) == 2 for found in by_customer.values())
    # Every partition a globex run touched is globex's.
    for record in by_customer["globex"]:
        tags = record.dagster_run.tags
        touched = [
            tags.get("dagster/partition"),
            tags.get("dagster/asset_partition_range_start"),
            tags.get("dagster/asset_partition_range_end"),
        ]
        assert all(key.split(".")[0] == "globex" for key in touched if key)
    # acme has one model version and one ledger row, both written by acme's own training run.
    assert [str(v.version) for v in registry.client.search_model_versions("name='retrain-acme'")] == ["1"]
    history = ledger.history(warehouse, "acme")
    acme_runs = {r.dagster_run.run_id for r in by_customer["acme"]}
    assert len(history) == 1 and history["dagster_run_id"].iloc[0] in acme_runs
    assert registry.alias_version("retrain-acme", CHAMPION) == "1"
    versions = warehouse.query(
        f'select distinct model_version from "{DRIFT_BATCHES_TABLE}" where customer = ?', ["acme"]
    )
    assert versions["model_version"].tolist() == ["1"]


def test_offboard_keeps_everything_and_onboarding_again_needs_reuse(onboarded):
    home, root = onboarded.home, onboarded.root
    csv = onboarded.sources["acme"]
    flag = ("--home", str(home.root))  # the home given as a flag as well as in RETRAIN_HOME
    offboarded = cli("offboard", "acme", *flag, home=home.root, cwd=root)
    assert offboarded.returncode == 0, offboarded.stderr
    assert "data, models and ledger are kept" in offboarded.stdout
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert "acme" not in instance.get_dynamic_partitions("customers")
        assert not [k for k in instance.get_dynamic_partitions("batches") if k.startswith("acme.")]
        assert "globex" in instance.get_dynamic_partitions("customers")
    resources = local_resources(home)
    warehouse, registry = resources["warehouse"].get_warehouse(), resources["registry"].get_registry()
    assert onboarding.status(warehouse, "acme")["status"] == onboarding.OFFBOARDED
    assert len(ledger.history(warehouse, "acme")) == 1 and registry.alias_version("retrain-acme", CHAMPION) == "1"
    assert warehouse.query('select count(*) as n from "landing_acme"')["n"].iloc[0] == ROWS

    assert_one_line_error(cli("train", "acme", *flag, home=home.root, cwd=root), "acme is offboarded", "--reuse")
    again = ["onboard", "acme", "--source", str(csv), "--label", "churned", "--id", "subscriber_id", *flag]
    assert_one_line_error(cli(*again, home=home.root, cwd=root), "acme", "was offboarded", "pass --reuse")
    reused = cli(*again, "--reuse", home=home.root, cwd=root)
    assert reused.returncode == 0, reused.stderr
    assert "the onboarding sensors now backfill" in reused.stdout
    assert "the earlier landing table is kept as landing_acme__until_" in reused.stdout
    state = onboarding.status(warehouse, "acme")
    assert state["status"] == onboarding.REQUESTED and state["mode"] == "approve"
    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        assert "acme" in instance.get_dynamic_partitions("customers")
    # The earlier history is kept beside the new one; the ledger and the champion are untouched.
    tables = warehouse.query("select table_name from information_schema.tables where table_name like 'landing_acme%'")
    assert len(tables) == 2
    assert registry.alias_version("retrain-acme", CHAMPION) == "1" and len(ledger.history(warehouse, "acme")) == 1
    assert pd.Timestamp(state["requested_at"]) > pd.Timestamp(onboarding.status(warehouse, "globex")["requested_at"])
