"""Active learning (issue 12): the rows of a scored batch the model is least sure of go to the labelling queue,
`label-queue --export` hands them to experts, and their labels, ingested back, mark the rows labelled."""

from __future__ import annotations

import gc
import json
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from retrain_platform import labelling
from retrain_platform.customers import load_spec
from retrain_platform.monitoring import classified
from retrain_platform.registry import CHAMPION
from retrain_platform.runner import RunFailed, Runner
from retrain_platform.spec import parse_spec
from retrain_platform_tests.conftest import cli

CUSTOMER = "lumen-streaming"
NOW = datetime(2026, 3, 2, 9, 30)


def spec_of(**overrides):
    base = {
        "customer": "acme",
        "landing_table": "landing_acme",
        "timestamp_column": "at",
        "label_column": "y",
        "id_column": "id",
        "features": [{"name": "x", "kind": "numeric"}],
        "task": "binary",
        "primary_metric": "roc_auc",
    }
    return parse_spec({**base, **overrides})


# ---------------------------------------------------------------------------------------------------
# Choosing the rows: pure


def test_margin_is_the_top_class_probability_minus_the_second():
    assert labelling.margins(np.array([[0.5, 0.5], [0.9, 0.1]])) == pytest.approx([0.0, 0.8])
    assert labelling.margins(np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])) == pytest.approx([0.2, 0.7])
    with pytest.raises(ValueError, match="at least 2 classes"):
        labelling.margins(np.array([0.5, 0.5]))


def test_the_n_rows_of_smallest_margin_are_chosen_most_uncertain_first():
    p1 = np.array([0.95, 0.52, 0.10, 0.45, 0.70, 0.50, 0.99])
    proba = np.column_stack([1 - p1, p1])
    chosen = labelling.most_uncertain([f"r{i}" for i in range(7)], proba, 3)
    assert list(chosen["row_id"]) == ["r5", "r1", "r3"]  # margins 0.00, 0.04, 0.10
    assert chosen["uncertainty"].to_numpy() == pytest.approx([1.0, 0.96, 0.90])
    assert len(labelling.most_uncertain(["a", "b"], proba[:2], 50)) == 2
    assert labelling.most_uncertain(["a", "b"], proba[:2], 0).empty


def test_multiclass_rows_are_judged_by_their_two_top_classes():
    proba = np.array([[0.40, 0.35, 0.25], [0.34, 0.33, 0.33], [0.80, 0.10, 0.10], [0.45, 0.10, 0.45]])
    chosen = labelling.most_uncertain(["a", "b", "c", "d"], proba, 2)
    assert list(chosen["row_id"]) == ["d", "b"]  # margins 0.00 and 0.01; a's 0.05 and c's 0.70 are surer


def test_ties_go_to_the_smaller_row_id_whatever_the_chunks():
    ids = [f"id-{i:03d}" for i in range(200)]
    rng = np.random.default_rng(3)
    p1 = rng.choice([0.5, 0.6, 0.9], size=200)  # many equal margins
    proba = np.column_stack([1 - p1, p1])
    whole = labelling.most_uncertain(ids, proba, 40)

    order = rng.permutation(200)
    chunked = labelling.MostUncertain(40)
    for part in np.array_split(order, 7):
        chunked.add([ids[i] for i in part], proba[part])

    pd.testing.assert_frame_equal(chunked.rows(), whole)
    margin = {0.5: 0, 0.6: 1, 0.9: 2}
    expected = sorted(ids, key=lambda row: (margin[p1[ids.index(row)]], row))[:40]
    assert list(whole["row_id"]) == expected


def test_labelled_rows_and_rows_without_finite_probabilities_are_never_chosen():
    proba = np.array([[0.5, 0.5], [0.55, 0.45], [np.nan, np.nan], [0.9, 0.1]])
    chosen = labelling.most_uncertain(["a", "b", "c", "d"], proba, 3, labelled=[True, False, False, False])
    assert list(chosen["row_id"]) == ["b", "d"]


def test_regression_customers_without_ids_and_a_size_of_zero_queue_nothing():
    assert labelling.picker_for(spec_of()).size == 50  # the default
    assert labelling.picker_for(spec_of(labelling_queue_size=7)).size == 7
    for spec, reason in (
        (spec_of(task="regression", primary_metric="rmse"), "regression"),
        (spec_of(id_column=None), "no id column"),
        (spec_of(labelling_queue_size=0), "labelling_queue_size to 0"),
    ):
        assert labelling.picker_for(spec) is None
        assert reason in labelling.not_queued_reason(spec)


def test_a_negative_queue_size_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="labelling_queue_size"):
        spec_of(labelling_queue_size=-1)


# ---------------------------------------------------------------------------------------------------
# The queue table


def test_the_queue_replaces_a_batchs_open_rows_keeps_labelled_ones_and_marks_labels(warehouse):
    spec = spec_of()
    landing = pd.DataFrame({"id": [1, 2, 3, 4], "at": pd.Timestamp("2026-03-01"), "x": [0.1, 0.2, 0.3, 0.4],
                            "y": pd.Series([None] * 4, dtype="Int64"), "batch_id": "w1"})  # fmt: skip
    warehouse.write(spec.landing_table, landing)
    chosen = pd.DataFrame({"row_id": ["2", "3"], "uncertainty": [0.99, 0.9]})
    assert labelling.enqueue(warehouse, "acme", "w1", chosen, NOW) == 2

    warehouse.execute('update "landing_acme" set "y" = 1 where "id" = 2')
    assert labelling.mark_labelled(warehouse, spec, NOW) == 1
    assert list(labelling.queued_rows(warehouse, "acme")["row_id"]) == ["3"]
    # Scored again: the open row is replaced, the labelled one stays and is not queued twice.
    again = pd.DataFrame({"row_id": ["2", "4"], "uncertainty": [0.99, 0.95]})
    assert labelling.enqueue(warehouse, "acme", "w1", again, NOW) == 1
    everything = labelling.queued_rows(warehouse, "acme", include_labelled=True)
    assert sorted(everything["row_id"]) == ["2", "4"]
    assert everything.set_index("row_id")["labelled_at"].notna().to_dict() == {"2": True, "4": False}

    exported = labelling.export_rows(warehouse, spec)
    assert list(exported.columns) == ["id", "at", "x", "y"]
    assert exported["id"].tolist() == [4] and exported["y"].isna().all()

    labelling.forget_batch(warehouse, "acme", "w1")
    assert labelling.queued_rows(warehouse, "acme").empty
    assert len(labelling.queued_rows(warehouse, "acme", include_labelled=True)) == 1


# ---------------------------------------------------------------------------------------------------
# End to end: a real batch, the command line, experts' labels back through ingest


@pytest.fixture(scope="module")
def lumen(trained_customer, copy_platform, tmp_path_factory):
    """A copy of trained lumen-streaming (its spec predates the queue setting: the default 50 applies)."""
    trained = trained_customer(CUSTOMER)
    with copy_platform(trained, tmp_path_factory.mktemp("labelling")) as platform:
        yield platform


def champion_margins(platform, spec, frame: pd.DataFrame) -> pd.Series:
    registry = platform.registry
    model = registry.load(spec.model_name, registry.alias_version(spec.model_name, CHAMPION))
    _, proba = classified(model, frame[spec.feature_names])
    return pd.Series(labelling.margins(proba), index=frame[spec.id_column].astype(str).to_numpy())


@pytest.mark.slow
@pytest.mark.e2e  # a whole command-line journey in subprocesses: the end-to-end lane
def test_export_fill_and_ingest_marks_the_queue_labelled(lumen, tmp_path):
    platform = lumen
    spec = load_spec(platform.warehouse, CUSTOMER)
    batch = platform.demo[CUSTOMER].batches[0]
    truth = batch.set_index(spec.id_column)[spec.label_column]
    unlabelled = batch.drop(columns=[spec.label_column])
    unlabelled.to_csv(tmp_path / "week-1.csv", index=False)
    home = platform.home.root

    ingested = cli("ingest", CUSTOMER, "--source", str(tmp_path / "week-1.csv"), "--batch", "week-1", home=home, cwd=tmp_path)
    assert ingested.returncode == 0, ingested.stderr[-3000:]

    export = tmp_path / "to-label.csv"
    listed = cli("label-queue", CUSTOMER, "--export", str(export), "--json", home=home, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    queued = pd.DataFrame(json.loads(listed.stdout))
    assert len(queued) == 50 and set(queued["batch_id"]) == {"week-1"}
    assert queued["labelled_at"].isna().all()
    # The 50 rows of smallest margin under the champion, most uncertain first.
    margins = champion_margins(platform, spec, unlabelled)
    assert margins[queued["row_id"]].max() <= margins.drop(queued["row_id"]).min() + 1e-6
    assert queued["uncertainty"].is_monotonic_decreasing
    assert queued["uncertainty"].to_numpy() == pytest.approx(1 - margins[queued["row_id"]].to_numpy(), abs=1e-6)

    sheet = pd.read_csv(export)
    assert list(sheet.columns) == [spec.id_column, spec.timestamp_column, *spec.feature_names, spec.label_column]
    assert sheet[spec.label_column].isna().all()
    assert sheet[spec.id_column].astype(str).tolist() == queued["row_id"].tolist()

    # Experts fill 30 of the rows; the file comes back through ingest's late-label path.
    filled = sheet.copy()
    done = filled.index[:30]
    filled.loc[done, spec.label_column] = truth.loc[filled.loc[done, spec.id_column]].to_numpy()
    filled.to_csv(tmp_path / "labelled.csv", index=False)
    back = cli("ingest", CUSTOMER, "--source", str(tmp_path / "labelled.csv"), home=home, cwd=tmp_path)
    assert back.returncode == 0, back.stderr[-3000:]
    assert "0 new rows, 30 labels merged" in back.stdout

    everything = labelling.queued_rows(platform.warehouse, CUSTOMER, include_labelled=True).set_index("row_id")
    labelled_ids = set(filled.loc[done, spec.id_column].astype(str))
    assert set(everything.index[everything["labelled_at"].notna()]) == labelled_ids
    table = cli("label-queue", CUSTOMER, home=home, cwd=tmp_path)
    lines = table.stdout.splitlines()
    assert lines[-1] == f"20 row(s) of {CUSTOMER} wait for a label, the least certain first"
    assert {line.split()[1] for line in lines[1:-1]} == set(queued["row_id"]) - labelled_ids


@pytest.mark.slow
def test_a_quarantined_batch_puts_nothing_in_the_queue(lumen):
    platform = lumen
    runner = Runner(platform.defs, platform.instance, charts=False)
    spec = load_spec(platform.warehouse, CUSTOMER)
    poisoned = platform.demo[CUSTOMER].batches[1].drop(columns=[spec.label_column])
    poisoned["monthly_fee"] = poisoned["monthly_fee"].astype(float)
    poisoned.loc[poisoned.index[3], "monthly_fee"] = np.inf
    try:
        with pytest.raises(RunFailed, match="quarantined"):
            runner.ingest_and_monitor(spec, poisoned, "poisoned")
        everything = labelling.queued_rows(platform.warehouse, CUSTOMER, include_labelled=True)
        assert "poisoned" not in set(everything["batch_id"])
    finally:
        del runner
        gc.collect()
