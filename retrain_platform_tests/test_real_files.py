"""`retrain-platform onboard` and `ingest` on files as people have them (issue 10, "Real files, real faults"):
label values outside the customer's classes, columns differing only by case, epoch timestamps, and column
names with spaces, dashes, dots and accents. Each command runs as a subprocess, the way a user runs it; what
it stored is read back from the home's warehouse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain_platform import customers as customer_store
from retrain_platform.defs.resources import local_resources
from retrain_platform.demo_data import generate_customer_frame
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform.monitoring import DRIFT_BATCHES_TABLE, DRIFT_TABLE, METRICS_TABLE, PREDICTIONS_TABLE
from retrain_platform.profiling import PROFILES_TABLE
from retrain_platform.settings import Home
from retrain_platform.warehouse import Warehouse, quote
from retrain_platform_tests.conftest import assert_one_line_error, cli

pytestmark = pytest.mark.slow

EPOCH = pd.Timestamp("1970-01-01")


def warehouse_of(home: Path) -> Warehouse:
    return local_resources(Home(home))["warehouse"].get_warehouse()


def landing(home: Path, table: str) -> pd.DataFrame:
    frame = warehouse_of(home).query(f"select * from {quote(table)}")
    return frame.sort_values(list(frame.columns[:2]), kind="stable").reset_index(drop=True)


def epoch(moments: pd.Series, unit: str) -> pd.Series:
    return (moments - EPOCH) // pd.Timedelta(1, unit)


@dataclass
class Onboarded:
    """A binary customer onboarded from a CSV whose timestamps are epoch seconds, and its unused rows."""

    root: Path
    home: Path
    history: pd.DataFrame
    rest: pd.DataFrame


@pytest.fixture(scope="module")
def acme(tmp_path_factory) -> Onboarded:
    root = tmp_path_factory.mktemp("real-files")
    home = root / "home"
    frame = generate_customer_frame("lumen-streaming", 1_500, start="2026-03-01", end="2026-07-01", rng=3)
    frame["snapshot_at"] = frame["snapshot_at"].dt.floor("s")
    history, rest = frame.iloc[:1_200].reset_index(drop=True), frame.iloc[1_200:].reset_index(drop=True)
    history.assign(snapshot_at=epoch(history["snapshot_at"], "s")).to_csv(root / "acme.csv", index=False)
    completed = cli(
        "onboard", "acme", "--source", str(root / "acme.csv"), "--label", "churned", "--id", "subscriber_id",
        "--timestamp", "snapshot_at", "--batch-period", "month", home=home, cwd=root,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return Onboarded(root, home, history, rest)


# ------------------------------------------------------------------------------------ 8: label values


def test_a_label_outside_a_binary_customers_classes_is_refused_and_nothing_is_stored(acme):
    batch = acme.rest.iloc[:100].copy()
    batch.loc[[10, 20], "churned"] = 7
    batch.to_csv(acme.root / "sevens.csv", index=False)
    before = landing(acme.home, "landing_acme")

    completed = cli("ingest", "acme", "--source", str(acme.root / "sevens.csv"), home=acme.home, cwd=acme.root)

    assert assert_one_line_error(completed) == (
        "error: column 'churned': label value(s) 7 are not among acme's classes [0, 1]; nothing from this file was stored"
    )
    pd.testing.assert_frame_equal(landing(acme.home, "landing_acme"), before)
    spec = customer_store.load_spec(warehouse_of(acme.home), "acme")
    assert (spec.task, spec.label_values) == ("binary", [0, 1])


def test_late_labels_outside_the_classes_are_refused_and_merge_nothing(acme):
    ids = acme.history["subscriber_id"].iloc[:50]
    labels = pd.DataFrame({"subscriber_id": ids, "churned": np.where(np.arange(50) == 30, 2, 1)})
    labels.to_csv(acme.root / "late-labels.csv", index=False)
    before = landing(acme.home, "landing_acme")

    completed = cli("ingest", "acme", "--source", str(acme.root / "late-labels.csv"), home=acme.home, cwd=acme.root)

    assert assert_one_line_error(completed) == (
        "error: column 'churned': label value(s) 2 are not among acme's classes [0, 1]; nothing from this file was stored"
    )
    pd.testing.assert_frame_equal(landing(acme.home, "landing_acme"), before)


# ------------------------------------------------------------------------ 9: columns differing by case


def test_onboarding_a_file_with_columns_differing_only_by_case_is_refused(acme):
    frame = acme.history.assign(Plan=acme.history["plan"].str.upper())
    frame.to_csv(acme.root / "globex.csv", index=False)

    completed = cli("onboard", "globex", "--source", str(acme.root / "globex.csv"), "--label", "churned",
                    "--timestamp", "snapshot_at", home=acme.home, cwd=acme.root)  # fmt: skip

    assert assert_one_line_error(completed) == (
        "error: columns 'plan' and 'Plan' differ only by case, and the warehouse cannot keep both: "
        "rename or drop one of them"
    )
    warehouse = warehouse_of(acme.home)
    assert [spec.customer for spec in customer_store.list_specs(warehouse)] == ["acme"]
    assert not warehouse.table_exists("landing_globex")


def test_ingesting_a_file_with_columns_differing_only_by_case_is_refused(acme):
    batch = acme.rest.iloc[:50].assign(PLAN=lambda f: f["plan"])
    batch.to_csv(acme.root / "cased.csv", index=False)
    before = landing(acme.home, "landing_acme")

    completed = cli("ingest", "acme", "--source", str(acme.root / "cased.csv"), home=acme.home, cwd=acme.root)

    assert assert_one_line_error(completed) == (
        "error: columns 'plan' and 'PLAN' differ only by case, and the warehouse cannot keep both: "
        "rename or drop one of them"
    )
    pd.testing.assert_frame_equal(landing(acme.home, "landing_acme"), before)


# ----------------------------------------------------------------------------- 10: epoch timestamps


def test_epoch_seconds_at_onboarding_and_milliseconds_at_ingest_are_stored_as_their_dates(acme):
    stored = landing(acme.home, "landing_acme")
    history = stored[stored[BATCH_COLUMN].str.startswith("history-")].set_index("subscriber_id")["snapshot_at"]
    expected = acme.history.set_index("subscriber_id")["snapshot_at"]
    assert (history.loc[expected.index] == expected).all()
    assert sorted(stored[BATCH_COLUMN].unique()) == ["history-2026-03", "history-2026-04", "history-2026-05",
                                                      "history-2026-06"]  # fmt: skip

    batch = acme.rest.iloc[100:200]
    batch.assign(snapshot_at=epoch(batch["snapshot_at"], "ms")).to_csv(acme.root / "millis.csv", index=False)
    completed = cli("ingest", "acme", "--source", str(acme.root / "millis.csv"), "--batch", "millis", "--no-monitor",
                    home=acme.home, cwd=acme.root)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("acme: batch millis: 100 new rows, 0 labels merged")
    stored = landing(acme.home, "landing_acme")
    ingested = stored[stored[BATCH_COLUMN] == "millis"].set_index("subscriber_id")["snapshot_at"]
    assert (ingested.loc[batch["subscriber_id"]] == batch.set_index("subscriber_id")["snapshot_at"]).all()


def test_onboarding_numbers_that_are_no_epoch_time_is_refused_with_a_hint(acme):
    frame = acme.history.assign(snapshot_at=acme.history["snapshot_at"].dt.strftime("%Y%m%d").astype(int))
    frame.to_csv(acme.root / "initech.csv", index=False)

    completed = cli("onboard", "initech", "--source", str(acme.root / "initech.csv"), "--label", "churned",
                    "--timestamp", "snapshot_at", home=acme.home, cwd=acme.root)  # fmt: skip

    assert assert_one_line_error(completed) == (
        f"error: column 'snapshot_at': {frame['snapshot_at'].iloc[0]} is too small for a timestamp in seconds, "
        "milliseconds, microseconds or nanoseconds since 1970: write dates as text (2024-03-15 08:00) or as epoch time"
    )
    assert not warehouse_of(acme.home).table_exists("landing_initech")


# ------------------------------------------------------------------- 11: any column name a file can hold

WEATHER_FEATURES = ["air temp", "wind-speed", "rel. humidity", "coût €"]
WEATHER_LABEL = "pluie?"


def weather(rows: int, start: str, seed: int, warmer: float = 0.0) -> pd.DataFrame:
    """Readings every three hours with a rain label, under names no SQL identifier allows; no id column."""
    rng = np.random.default_rng(seed)
    air = rng.normal(12 + warmer, 5, rows)
    humidity = rng.uniform(20, 100, rows)
    return pd.DataFrame(
        {
            "relevé à": pd.date_range(start, periods=rows, freq="3h").strftime("%Y-%m-%d %H:%M"),
            "air temp": air.round(1),
            "wind-speed": rng.gamma(2.0, 3.0, rows).round(1),
            "rel. humidity": humidity.round(0),
            "coût €": rng.choice(["bas", "moyen", "élevé"], rows),
            WEATHER_LABEL: (humidity / 10 - air / 3 + rng.normal(0, 2, rows) > 2).astype(int),
        }
    )


@pytest.mark.e2e  # a whole command-line journey in subprocesses: the end-to-end lane
def test_columns_named_with_spaces_dashes_dots_and_accents_work_from_onboarding_to_drift(tmp_path):
    home = tmp_path / "home"
    weather(800, "2025-01-01", seed=1).to_csv(tmp_path / "meteo.csv", index=False)
    weather(200, "2025-04-11", seed=2, warmer=8.0).to_csv(tmp_path / "labelled.csv", index=False)
    weather(200, "2025-05-06", seed=3, warmer=8.0).drop(columns=[WEATHER_LABEL]).to_parquet(tmp_path / "unlabelled.parquet")

    onboarded = cli("onboard", "meteo", "--source", str(tmp_path / "meteo.csv"), "--label", WEATHER_LABEL,
                    "--mode", "auto", home=home, cwd=tmp_path)  # fmt: skip
    assert onboarded.returncode == 0, onboarded.stderr[-3000:]
    assert "label 'pluie?', timestamp 'relevé à', id None; 3 numeric and 1 categorical features" in onboarded.stdout
    trained = cli("train", "meteo", home=home, cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    outputs = {
        batch: cli("ingest", "meteo", "--source", str(tmp_path / source), "--batch", batch, home=home, cwd=tmp_path)
        for batch, source in (("labelled", "labelled.csv"), ("unlabelled", "unlabelled.parquet"))
    }
    for batch, completed in outputs.items():
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert f"monitored meteo.{batch}: run " in completed.stdout and "succeeded" in completed.stdout

    warehouse = warehouse_of(home)
    spec = customer_store.load_spec(warehouse, "meteo")
    assert (spec.feature_names, spec.label_column, spec.id_column) == (WEATHER_FEATURES, WEATHER_LABEL, None)
    assert warehouse.columns(spec.landing_table) == ["relevé à", *WEATHER_FEATURES, WEATHER_LABEL, BATCH_COLUMN]
    drift = warehouse.query(f'select "batch_id", "column", "statistic" from {quote(DRIFT_TABLE)} where "customer" = ?',
                            ["meteo"])  # fmt: skip
    for batch in ("labelled", "unlabelled"):
        measured = drift[drift["batch_id"] == batch].dropna(subset=["statistic"])
        assert set(WEATHER_FEATURES) <= set(measured["column"]), f"{batch}: {measured}"
    drifted = warehouse.query(f'select "batch_id", "drifted_columns" from {quote(DRIFT_BATCHES_TABLE)} order by 1')
    assert drifted["batch_id"].tolist() == ["labelled", "unlabelled"]
    assert all("air temp" in columns for columns in drifted["drifted_columns"])  # 8 degrees warmer
    realized = warehouse.query(
        f"select count(*) as n from {quote(METRICS_TABLE)} where batch_id = 'labelled' and kind = 'realized'"
    )
    assert realized["n"].iloc[0] > 0
    scored = warehouse.query(f"select batch_id, count(*) as n from {quote(PREDICTIONS_TABLE)} group by 1 order by 1")
    assert scored.to_dict("list") == {"batch_id": ["labelled", "unlabelled"], "n": [200, 200]}
    profile = json.loads(warehouse.query(f"select profile_json from {quote(PROFILES_TABLE)}")["profile_json"].iloc[0])
    assert set(WEATHER_FEATURES) <= {column["column"] for column in profile["columns"]}


def test_a_spec_error_is_one_line_naming_the_field_not_pydantics_text(tmp_path):
    frame = weather(400, "2025-01-01", seed=4)
    frame[""] = np.arange(len(frame)) % 7
    frame.to_parquet(tmp_path / "blank.parquet")

    completed = cli("onboard", "blank", "--source", str(tmp_path / "blank.parquet"), "--label", WEATHER_LABEL,
                    home=tmp_path / "home", cwd=tmp_path)  # fmt: skip

    assert assert_one_line_error(completed) == (
        "error: invalid customer spec: features.4.name: '' is not a column name (a non-empty text is needed)"
    )
