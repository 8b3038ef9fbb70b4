"""Replay: planning a dataset's history into windows and batches, and a real replay of two policies through
the command line, checked against each policy's own ledger, predictions and batch metrics."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from retrain_platform import examples, replay
from retrain_platform.replay import PolicyResult, ReplayError, Size, parse_size, plan_replay
from retrain_platform_tests.conftest import assert_one_line_error, cli


def _daily(days: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=days)
    return pd.DataFrame(
        {
            "day": pd.date_range("2024-01-01", periods=days, freq="D"),
            "x": x,
            "kind": rng.choice(["a", "b"], size=days),
            "target": (x + rng.normal(scale=0.5, size=days) > 0).astype(int),
        }
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500", Size(rows=500)),
        ("month", Size(count=1, unit="month")),
        ("6 months", Size(count=6, unit="month")),
        ("2w", Size(count=2, unit="week")),
        ("1Y", Size(count=1, unit="year")),
        ("quarters", Size(count=1, unit="quarter")),
    ],
)
def test_sizes_are_rows_or_calendar_periods(text, expected):
    assert parse_size(text, "--batch") == expected


@pytest.mark.parametrize("text", ["0", "fortnight", "3 parsecs", "-5", "0 months"])
def test_a_size_that_is_neither_refuses_naming_the_option(text):
    with pytest.raises(ReplayError, match="^--batch: "):
        parse_size(text, "--batch")


def test_a_plan_cuts_the_history_in_time_order_into_the_first_window_and_batches():
    frame = _daily(400).sample(frac=1.0, random_state=1)  # shuffled: the plan sorts by time
    plan = plan_replay(frame, label="target", batch="month", initial="7 months")

    assert plan.added_id and plan.spec.id_column == "row_id"
    assert plan.spec.task == "binary" and plan.metric == "roc_auc"
    assert plan.initial_end == pd.Timestamp("2024-08-01")
    assert plan.initial["day"].max() < plan.initial_end <= plan.batches[0].frame["day"].min()
    assert len(plan.initial) == 213
    months = [batch.start for batch in plan.batches]
    assert months[:3] == [pd.Timestamp("2024-08-01"), pd.Timestamp("2024-09-01"), pd.Timestamp("2024-10-01")]
    assert [len(b.frame) for b in plan.batches[:2]] == [31, 30]
    assert sum(len(b.frame) for b in plan.batches) + len(plan.initial) == 400
    assert [b.batch_id for b in plan.batches[:2]] == ["batch-001", "batch-002"]
    for earlier, later in zip(plan.batches, plan.batches[1:]):
        assert earlier.frame["day"].max() < later.frame["day"].min()


def test_batches_of_rows_and_the_default_window():
    plan = plan_replay(_daily(400), label="target", id_column=None, batch="50")
    assert len(plan.initial) == 200  # 30% of 400 is below min_training_rows, so the window holds 200
    assert [len(b.frame) for b in plan.batches] == [50, 50, 50, 50]
    assert plan.batches[0].arrives_at == plan.batches[0].frame["day"].max()


def test_auto_batches_choose_the_finest_period_with_at_most_36_batches():
    plan = plan_replay(_daily(1000), label="target", initial="1 year")
    assert plan.batch_size == Size(unit="month")
    assert 20 <= len(plan.batches) <= replay.MAX_AUTO_BATCHES


def test_a_first_window_too_small_to_train_is_refused():
    with pytest.raises(ReplayError, match=r"^--initial: the first window \(2 months\) holds 60 labelled row"):
        plan_replay(_daily(400), label="target", initial="2 months")
    with pytest.raises(ReplayError, match="holds the whole history"):
        plan_replay(_daily(400), label="target", initial="5 years")


def test_the_same_validation_as_onboarding():
    with pytest.raises(ReplayError, match="label column 'churn' is not in the file"):
        plan_replay(_daily(), label="churn")


def test_the_shipped_example_is_real_data_with_a_binary_label():
    example = examples.load_example()
    assert len(example.frame) == 1461
    assert set(example.frame.columns) == {"date", "precipitation", "temp_max", "temp_min", "wind", "sunny"}
    plan = plan_replay(example.frame, label=example.label, timestamp=example.timestamp, batch=example.batch,
                       initial=example.initial)  # fmt: skip
    assert len(plan.initial) == 366 and len(plan.batches) == 36


def test_the_worst_batch_is_the_highest_error_for_error_metrics():
    auc = PolicyResult(policy="never", metric="roc_auc", metric_by_batch=[0.8, None, 0.6])
    rmse = PolicyResult(policy="never", metric="rmse", metric_by_batch=[3.0, None, 5.0])
    assert (auc.mean_metric, auc.min_metric) == (pytest.approx(0.7), 0.6)
    assert (rmse.mean_metric, rmse.min_metric) == (pytest.approx(4.0), 5.0)
    assert list(auc.to_json()) == list(replay.JSON_KEYS)


def test_scheduled_and_always_retrain_after_labels_but_not_after_the_last_batch():
    assert [replay.retrains_after(replay.ALWAYS, n, 5, 2) for n in range(1, 6)] == [True, True, True, True, False]
    assert [replay.retrains_after(replay.SCHEDULED, n, 5, 2) for n in range(1, 6)] == [False, True, False, True, False]
    assert not any(replay.retrains_after(replay.NEVER, n, 5, 2) for n in range(1, 6))


def test_bad_options_are_one_line_errors(tmp_path):
    source = tmp_path / "history.csv"
    _daily().to_csv(source, index=False)
    completed = cli("replay", "--source", str(source), "--label", "target", "--policies", "never,sometimes",
                    "--out", str(tmp_path / "out"), home=tmp_path / "home", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(completed, "--policies", "sometimes")
    completed = cli("replay", "--source", str(source), "--label", "target", "--batch", "fortnight",
                    home=tmp_path / "home", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(completed, "--batch", "fortnight")


def _query(database: Path, sql: str, params=()) -> pd.DataFrame:
    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql, list(params)).df()


@pytest.mark.e2e
@pytest.mark.slow
def test_a_replay_of_two_policies_matches_each_policys_ledger_and_predictions(tmp_path):
    """Seattle's 2012 trains the first model; four monthly batches of 2013 follow, under `never` and `always`."""
    example = examples.load_example()
    source = tmp_path / "weather.csv"
    example.frame[example.frame["date"] < "2013-05-01"].to_csv(source, index=False)
    out = tmp_path / "out"
    completed = cli(
        "replay", "--source", str(source), "--label", "sunny", "--batch", "month", "--initial", "1 year",
        "--policies", "never,always", "--out", str(out), "--json", "--search-iterations", "1", "--cv-splits", "2",
        home=tmp_path / "unused", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr
    assert "never" in completed.stderr and "4/4 batches" in completed.stderr  # progress per policy

    report = json.loads(completed.stdout)
    assert [entry["policy"] for entry in report] == ["never", "always"]
    assert json.loads((out / "replay.json").read_text()) == report
    assert (out / "replay.png").stat().st_size > 10_000
    for entry in report:
        assert list(entry) == list(replay.JSON_KEYS)
        assert entry["metric"] == "roc_auc"
        assert len(entry["metric_by_batch"]) == 4

        warehouse = out / "homes" / entry["policy"] / "warehouse.duckdb"
        ledger = _query(warehouse, 'select * from model_ledger order by recorded_at')
        later = ledger[ledger["trigger"] != replay.FIRST_TRAINING]
        assert entry["retrains"] == len(later)
        assert entry["promotions"] == int((later["action"] == "promote").sum())

        metrics = _query(
            warehouse,
            "select batch_id, value from batch_metrics where metric = 'roc_auc' and kind = 'realized' "
            "and model_role = 'champion' order by batch_id",
        )
        assert [round(v, 4) for v in metrics["value"]] == entry["metric_by_batch"]
        valid = [v for v in entry["metric_by_batch"] if v is not None]
        assert entry["mean_metric"] == pytest.approx(np.mean(valid), abs=1e-4)
        assert entry["min_metric"] == pytest.approx(min(valid), abs=1e-4)

        # Each batch was scored by the champion that served when it arrived, before its labels could train one.
        scored = _query(
            warehouse,
            "select distinct batch_id, model_version from batch_predictions where model_role = 'champion' order by 1",
        )
        arrivals = _query(
            warehouse, "select batch_id, max(date) as last from landing_replay where batch_id like 'batch-%' group by 1"
        )
        for row in scored.itertuples():
            arrived = arrivals.loc[arrivals["batch_id"] == row.batch_id, "last"].iloc[0]
            before = ledger[ledger["recorded_at"] < arrived]
            assert row.model_version == before["champion_after"].dropna().iloc[-1]

    never, always = report
    # Both start from the one first model, trained once: the first batch, scored before any retraining, is
    # scored alike.
    assert never["metric_by_batch"][0] == always["metric_by_batch"][0]
    assert not (out / "homes" / replay.FIRST_MODEL_HOME / "replay.log").read_text().count("Traceback")
    assert never["retrains"] == 0 and never["promotions"] == 0 and never["compute_s"] == 0
    assert always["retrains"] == 3  # after batches 1, 2 and 3; none after the last
    assert always["compute_s"] > 0


def test_a_copied_home_is_a_home_of_its_own(tmp_path):
    """What a policy's home starts as: a copy of the first model's. Its registry loads and logs artifacts in
    its own folder, so the copy works once the original is gone."""
    from sklearn.linear_model import LogisticRegression

    from retrain_platform.defs.resources import local_resources
    from retrain_platform.settings import Home

    source = Home(tmp_path / "first-model").ensure()
    registry = local_resources(source)["registry"].get_registry()
    X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    model = LogisticRegression().fit(X, [0, 0, 1, 1])
    with registry.start_training_run("acme", run_name="first", tags={}):
        logged = registry.log_candidate("logistic", model, params={}, metrics={}, input_example=X, tags={})
    version = registry.register("acme-model", logged)

    target = Home(tmp_path / "always").ensure()
    replay.copy_home(source.root, target.root)
    import shutil

    shutil.rmtree(source.root)
    copied = local_resources(target)["registry"].get_registry()
    assert list(copied.load("acme-model", version).predict(X)) == [0, 0, 1, 1]
    with copied.start_training_run("acme", run_name="second", tags={}):
        again = copied.log_candidate("logistic", model, params={}, metrics={}, input_example=X, tags={})
    assert str(target.root) in copied.client.get_run(again.run_id).info.artifact_uri
    assert not source.root.exists()  # nothing was written back into the original
