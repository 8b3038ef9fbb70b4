"""The trigger decisions, the evidence readers, alerts, the clock and the local dagster.yaml: the pure core
of automation, tested directly (a real DuckDB warehouse where evidence is read)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import yaml

from retrain_platform import alerts, evidence, settings, triggers
from retrain_platform.defs.resources import Clock
from retrain_platform.spec import parse_spec
from retrain_platform.triggers import (
    BatchDrift,
    BatchMetric,
    ChampionMove,
    LastTraining,
    ShadowComparison,
    Trigger,
)

NOW = datetime(2026, 10, 20, 12, 0)


def drift(batch_id: str, drifted: bool, share: float = 0.6, version: str = "3") -> BatchDrift:
    return BatchDrift(batch_id, None, share, drifted, "a, b" if drifted else "", version)


def comparison(batch_id: str, champion: float, previous: float, rows: int = 500, versions=("2", "1")) -> ShadowComparison:
    return ShadowComparison(batch_id, rows, versions[0], champion, versions[1], previous)


PROMOTION = ChampionMove("promote", from_version="1", to_version="2", recorded_at=NOW)


# ---------------------------------------------------------------------------------------------------
# Drift


def test_drift_fires_when_the_k_latest_batches_all_drifted():
    latest_first = [drift("w4", True, 0.88), drift("w3", True, 0.62), drift("w2", False, 0.1)]
    trigger = triggers.drift_trigger("acme", latest_first, consecutive=2, dataset_share=0.5)

    assert trigger == Trigger(
        kind="drift",
        customer="acme",
        evidence_key="w3+w4@v3",
        reason=(
            "dataset drift in 2 consecutive batches against champion v3: w3 62% (a, b), w4 88% (a, b); "
            "thresholds: 2 batches, dataset drifts at >= 50% of features"
        ),
    )
    assert trigger.run_key == "drift:acme:w3+w4@v3"
    assert trigger.text == "drift: " + trigger.reason


@pytest.mark.parametrize(
    "latest_first, consecutive",
    [
        ([drift("w4", True)], 2),  # not enough batches yet
        ([drift("w4", True), drift("w3", False), drift("w2", True)], 2),  # not consecutive
        ([drift("w4", False), drift("w3", True)], 1),  # the latest one is fine
        ([], 1),
    ],
    ids=["too-few", "interrupted", "latest-fine", "none"],
)
def test_drift_does_not_fire_without_k_consecutive_drifted_batches(latest_first, consecutive):
    assert triggers.drift_trigger("acme", latest_first, consecutive, 0.5) is None


def test_drift_evidence_names_the_first_drifted_columns_of_each_batch():
    wide = BatchDrift("w9", None, 1.0, True, "a, b, c, d, e", "3")
    trigger = triggers.drift_trigger("acme", [wide], consecutive=1, dataset_share=0.5)
    assert "w9 100% (a, b, c +2 more)" in trigger.reason


def test_drift_evidence_moves_with_every_new_batch():
    first = triggers.drift_trigger("acme", [drift("w4", True), drift("w3", True)], 2, 0.5)
    later = triggers.drift_trigger("acme", [drift("w5", True), drift("w4", True)], 2, 0.5)
    assert first.run_key != later.run_key


def test_drift_needs_the_champion_metric_to_fall_when_a_confirmation_is_asked():
    """Seasonal drift with a model that still predicts well spends no training; drift with a falling metric does."""
    both = [drift("w4", True), drift("w3", True)]

    def confirmation(realized, estimated, labelled=500, holdout_estimated=0.78):
        latest = BatchMetric("w4", "3", "roc_auc", realized, estimated, labelled)
        return triggers.Confirmation([latest], 0.80, holdout_estimated, min_drop=0.025, min_labelled_rows=100)

    assert triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.79, 0.81)) is None  # 1.25% below: noise
    assert triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.85, 0.70)) is None  # realized decides
    fired = triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.74, 0.81))
    assert fired.reason.endswith(
        "; confirmed by realized roc_auc 0.7400 on batch w4, 7.5% below the champion's holdout 0.8000 (at least 2.5%)"
    )
    # Before labels arrive the label-free estimate confirms, against the estimate on the holdout: like with like.
    early = triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.74, 0.70, labelled=20))
    assert "confirmed by estimated roc_auc 0.7000 on batch w4, 10.3% below the champion's holdout estimate 0.7800" in early.reason
    assert triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.74, 0.77, labelled=20, holdout_estimated=0.78)) is None
    assert triggers.drift_trigger("acme", both, 2, 0.5, confirmation(0.74, 0.70, labelled=20, holdout_estimated=None)) is None
    assert triggers.drift_trigger("acme", both, 2, 0.5, confirmation(None, None, labelled=0)) is None


def test_an_estimate_is_held_to_the_floor_after_correcting_the_gap_it_showed_on_the_holdout():
    """A model whose probabilities are not calibrated estimates its ROC AUC low everywhere: 0.69 on a batch
    says nothing against a 0.70 floor when the same estimate said 0.75 on a holdout that really scored 0.84."""
    latest = BatchMetric("w2", "1", "roc_auc", None, 0.69, 0)
    calibrated_gap = triggers.Confirmation([latest], 0.84, 0.75, min_drop=0.05, min_labelled_rows=100, batches=2)
    assert triggers.performance_trigger("acme", latest, 0.7, 100, calibrated_gap) is None
    fallen = BatchMetric("w2", "1", "roc_auc", None, 0.60, 0)
    confirmation = triggers.Confirmation([fallen], 0.84, 0.75, min_drop=0.05, min_labelled_rows=100, batches=2)
    fired = triggers.performance_trigger("acme", fallen, 0.7, 100, confirmation)
    assert fired.reason.startswith(
        "estimated roc_auc 0.6000 (0.6900 corrected by the estimate's gap on the holdout, +0.0900) of champion v1 "
        "on batch w2 (0 labelled rows) is below the floor 0.7"
    )
    # Without the holdout's estimate (a model trained before it was kept), the estimate is taken as it is.
    assert triggers.performance_trigger("acme", latest, 0.7, 100, None) is not None


def test_a_lasting_drop_from_the_champion_holdout_metric_is_a_performance_trigger_in_itself():
    def drop_of(*values, metric_name="roc_auc", holdout=0.80, batches=2):
        recent = [BatchMetric(f"w{7 - n}", "4", metric_name, value, None, 900) for n, value in enumerate(values)]
        confirmation = triggers.Confirmation(recent, holdout, None, min_drop=0.05, min_labelled_rows=100, batches=batches)
        return triggers.performance_trigger("acme", recent[0], None, 100, confirmation)

    assert drop_of(0.77, 0.70) is None  # the latest batch is 3.75% below the holdout
    assert drop_of(0.70, 0.79) is None  # one bad batch: noise until it lasts
    assert drop_of(0.70) is None  # only one batch measured so far
    fired = drop_of(0.72, 0.74)
    assert fired.reason == (
        "champion v4: realized roc_auc 0.7200 on batch w7, 10.0% below the champion's holdout 0.8000; "
        "realized roc_auc 0.7400 on batch w6, 7.5% below the champion's holdout 0.8000 (at least 5.0%); "
        "realized needs >= 100 labelled rows"
    )
    assert fired.evidence_key == "w7@v4:realized"
    # Error metrics: a larger error is the drop.
    assert drop_of(10.4, metric_name="rmse", holdout=10.0, batches=1) is None
    assert "6.0% above the champion's holdout 10.0000" in drop_of(10.6, metric_name="rmse", holdout=10.0, batches=1).reason


def test_a_trigger_says_when_the_change_it_saw_began():
    """The start of the run of the champion's latest batches that each fell: where the rows a retraining must
    learn from begin. It reaches back past the batches the trigger needs, and stops at the first good one."""

    def day(number: int) -> datetime:
        return datetime(2026, 10, number)

    def batches(*values):  # newest first: w7, w6, ...
        return [BatchMetric(f"w{7 - n}", "4", "roc_auc", v, None, 900, batch_start=day(7 - n)) for n, v in enumerate(values)]

    def fired(recent, floor=0.7, batches_needed=2):
        confirmation = triggers.Confirmation(recent, 0.82, None, 0.05, 100, batches=batches_needed)
        return triggers.performance_trigger("acme", recent[0], floor, 100, confirmation)

    assert fired(batches(0.62, 0.66, 0.60, 0.83, 0.55)).since == day(5)  # w4 was fine: the change began with w5
    # Under the floor or fallen 5% from the holdout (0.76 is 7.3% below 0.82): both belong to the run.
    assert fired(batches(0.62, 0.76, 0.83)).since == day(6)
    assert fired(batches(0.62, 0.80)).since == day(7)  # the floor alone fired, on the latest batch
    assert fired(batches(0.75, 0.76, 0.90), floor=None).since == day(6)  # the drop alone, over its two batches
    # Without a confirmation, only the batch that crossed the floor is known.
    assert triggers.performance_trigger("acme", batches(0.6)[0], 0.7, 100).since == day(7)

    def drifted(*flags):
        return [BatchDrift(f"w{7 - n}", day(7 - n), 0.6, flag, "a", "3") for n, flag in enumerate(flags)]

    assert triggers.drift_trigger("acme", drifted(True, True, True, False, True), 2, 0.5).since == day(5)
    assert triggers.drift_trigger("acme", drifted(True, True), 2, 0.5).since == day(6)


def test_a_training_learns_from_the_rows_of_a_change_only_once_they_outnumber_its_holdout():
    from retrain_platform.modelling import time_split

    spec = parse_spec({**SPEC, "holdout_fraction": 0.2})
    for rows in (7865, 8615, 10, 3):
        _, holdout, _ = time_split(pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=rows, freq="h")}), spec)
        assert triggers.rows_to_learn(rows, 0, 0.2)[1] == len(holdout)
    # A week of 1,000 rows after a change, 7,865 in the window: all of them would be holdout.
    assert triggers.rows_to_learn(7865, 1000, 0.2) == (0, 1573)
    assert triggers.rows_to_learn(8615, 2000, 0.2) == (2000 - 1723, 1723)
    assert triggers.rows_to_learn(0, 0, 0.2) == (0, 0)


# ---------------------------------------------------------------------------------------------------
# Performance


def metric(name: str, realized: float | None, estimated: float | None, labelled: int) -> BatchMetric:
    return BatchMetric("w7", "4", name, realized, estimated, labelled)


def test_realized_performance_below_the_floor_fires():
    trigger = triggers.performance_trigger("acme", metric("roc_auc", 0.64, 0.8, 900), floor=0.7, min_labelled_rows=100)
    assert trigger.evidence_key == "w7@v4:realized"
    assert trigger.reason == (
        "realized roc_auc 0.6400 of champion v4 on batch w7 (900 labelled rows) is below the floor 0.7; "
        "realized needs >= 100 labelled rows"
    )


def test_the_estimate_stands_in_when_labels_are_late():
    late = metric("roc_auc", 0.2, 0.66, 12)  # twelve labels: the realized value is noise
    trigger = triggers.performance_trigger("acme", late, floor=0.7, min_labelled_rows=100)
    assert trigger.evidence_key == "w7@v4:estimated"
    assert trigger.reason.startswith("estimated roc_auc 0.6600")
    assert triggers.performance_trigger("acme", metric("roc_auc", 0.2, 0.75, 12), 0.7, 100) is None


@pytest.mark.parametrize(
    "batch, floor",
    [
        (metric("roc_auc", 0.71, None, 900), 0.7),
        (metric("roc_auc", 0.5, None, 10), 0.7),  # too few labels and no estimate (e.g. regression)
        (metric("roc_auc", 0.5, 0.5, 900), None),  # no floor set
        (None, 0.7),  # nothing measured yet
    ],
    ids=["above-floor", "nothing-usable", "no-floor", "no-batch"],
)
def test_performance_does_not_fire(batch, floor):
    assert triggers.performance_trigger("acme", batch, floor, min_labelled_rows=100) is None


def test_an_error_metric_fires_above_its_ceiling():
    worse = triggers.performance_trigger("acme", metric("rmse", 12.5, None, 900), floor=12.0, min_labelled_rows=100)
    assert "is above the ceiling 12" in worse.reason
    assert triggers.performance_trigger("acme", metric("rmse", 11.0, None, 900), 12.0, 100) is None


# ---------------------------------------------------------------------------------------------------
# New labels and the cooldown


def test_new_labels_fire_once_per_training():
    last = LastTraining(recorded_at=datetime(2026, 10, 1, 3, 0), dagster_run_id="abcdef12-3456")
    assert triggers.new_labels_trigger("acme", 999, 1000, last) is None
    trigger = triggers.new_labels_trigger("acme", 1_250, 1000, last)
    assert trigger.run_key == "new_labels:acme:since-abcdef12-3456"
    assert trigger.reason == "1,250 new labelled rows since the training of 2026-10-01 03:00 (run abcdef12); threshold 1,000"
    # More labels since the same training are the same evidence: one run per training.
    assert triggers.new_labels_trigger("acme", 5_000, 1000, last).run_key == trigger.run_key
    # A customer never trained is onboarding's business.
    assert triggers.new_labels_trigger("acme", 5_000, 1000, None) is None


def test_new_labels_must_also_be_a_share_of_the_last_training_set():
    last = LastTraining(recorded_at=datetime(2026, 10, 1, 3, 0), dagster_run_id="abcdef12-3456")
    # 1,250 new rows next to a 4,000-row training set: not yet as many rows again.
    assert triggers.new_labels_trigger("acme", 1_250, 1000, last, snapshot_rows=4_000, share=1.0) is None
    assert triggers.new_labels_trigger("acme", 3_999, 1000, last, snapshot_rows=4_000, share=1.0) is None
    trigger = triggers.new_labels_trigger("acme", 4_000, 1000, last, snapshot_rows=4_000, share=1.0)
    assert trigger.reason.endswith("threshold 1,000 and 1 x the 4,000 rows it trained on")
    # A small training set: the absolute threshold is the larger requirement and the only one named.
    small = triggers.new_labels_trigger("acme", 1_000, 1000, last, snapshot_rows=300, share=1.0)
    assert small.reason.endswith("threshold 1,000")


def test_the_cooldown_is_measured_from_the_last_training_with_the_given_now():
    last = LastTraining(recorded_at=NOW, dagster_run_id="r1")
    assert triggers.in_cooldown(last, NOW + timedelta(hours=23, minutes=59), 24)
    assert not triggers.in_cooldown(last, NOW + timedelta(hours=24), 24)
    assert triggers.cooldown_ends(last, 24) == NOW + timedelta(hours=24)
    assert not triggers.in_cooldown(None, NOW, 24)
    assert not triggers.in_cooldown(last, NOW, 0)


# ---------------------------------------------------------------------------------------------------
# Automatic rollback


def test_a_new_champion_worse_than_the_previous_by_more_than_the_tolerance_is_rolled_back():
    comparisons = [comparison("w5", 0.70, 0.80, rows=300), comparison("w6", 0.78, 0.79, rows=100), comparison("w7", 0.1, 0.9)]
    trigger = triggers.rollback_trigger(
        "acme", "roc_auc", PROMOTION, "2", comparisons, batches_needed=2, min_labelled_rows=100, tolerance=0.02
    )
    # Weighted by labelled rows: 0.7*0.75 + 0.78*0.25 = 0.72 against 0.8*0.75 + 0.79*0.25 = 0.7975; w7 is not judged.
    assert trigger.evidence_key == "v2-vs-v1:w5+w6"
    assert trigger.reason == (
        "champion v2 realized roc_auc 0.7200 vs 0.7975 for the previous champion v1 on w5, w6 "
        "(400 labelled rows): worse by 0.0775 > tolerance 0.02"
    )


@pytest.mark.parametrize(
    "move, champion, comparisons, needed",
    [
        (PROMOTION, "2", [comparison("w5", 0.79, 0.80)], 1),  # within the tolerance
        (PROMOTION, "2", [comparison("w5", 0.5, 0.80)], 2),  # one labelled batch of the two needed
        (PROMOTION, "2", [comparison("w5", 0.5, 0.80, rows=99)], 1),  # too few labels
        (ChampionMove("rollback", "2", "1", NOW), "1", [comparison("w5", 0.5, 0.8, versions=("1", "2"))], 1),
        (PROMOTION, "3", [comparison("w5", 0.5, 0.80)], 1),  # promoted again since
        (PROMOTION, "2", [comparison("w5", 0.5, 0.80, versions=("2", "0"))], 1),  # shadow of another version
        (ChampionMove("promote", None, "1", NOW), "1", [], 1),  # the first champion has nothing to go back to
        (None, "2", [comparison("w5", 0.5, 0.80)], 1),
    ],
    ids=["within-tolerance", "too-few-batches", "too-few-labels", "after-rollback", "superseded", "other-shadow",
         "first-champion", "no-move"],  # fmt: skip
)
def test_no_rollback(move, champion, comparisons, needed):
    assert triggers.rollback_trigger("acme", "roc_auc", move, champion, comparisons, needed, 100, 0.02) is None


def test_small_batches_are_judged_together_once_they_hold_enough_labels():
    small = [comparison(f"m{n}", 0.80, 0.90, rows=30) for n in range(1, 6)]
    assert triggers.rollback_trigger("acme", "roc_auc", PROMOTION, "2", small[:3], 1, 100, 0.02) is None  # 90 rows
    trigger = triggers.rollback_trigger("acme", "roc_auc", PROMOTION, "2", small, 1, 100, 0.02)
    assert trigger.evidence_key == "v2-vs-v1:m1+m2+m3+m4"
    assert "(120 labelled rows)" in trigger.reason


def test_rollback_reads_error_metrics_the_right_way_round():
    worse = [comparison("w5", champion=9.0, previous=8.0)]  # rmse: higher is worse
    better = [comparison("w5", champion=7.0, previous=8.0)]
    assert triggers.rollback_trigger("acme", "rmse", PROMOTION, "2", worse, 1, 100, 0.5).reason.endswith(
        "worse by 1.0000 > tolerance 0.5"
    )
    assert triggers.rollback_trigger("acme", "rmse", PROMOTION, "2", better, 1, 100, 0.5) is None


# ---------------------------------------------------------------------------------------------------
# Evidence from the warehouse


SPEC = {
    "customer": "acme",
    "landing_table": "landing_acme",
    "timestamp_column": "ts",
    "label_column": "y",
    "features": [{"name": "x", "kind": "numeric"}],
    "task": "binary",
    "training_window_days": 30,
}


def test_new_labelled_rows_are_those_a_training_would_add(warehouse):
    spec = parse_spec({**SPEC, "id_column": "id"})
    day = pd.Timestamp("2026-10-01")
    landing = pd.DataFrame(
        {
            "id": range(1, 9),
            # 1: outside the 30-day window; 2-3: in the last snapshot; 4-6: new and labelled; 7: unlabelled;
            # 8: an old row inside the window that an expert labelled late.
            "ts": [day - pd.Timedelta(days=60), day, day, day + pd.Timedelta(days=5), day + pd.Timedelta(days=6),
                   day + pd.Timedelta(days=7), day + pd.Timedelta(days=7), day - pd.Timedelta(days=10)],
            "x": range(8),
            "y": [1, 0, 1, 0, 1, 1, None, 0],
        }
    )  # fmt: skip
    warehouse.write(spec.landing_table, landing)
    warehouse.write("snapshot_acme", landing.iloc[[1, 2]].assign(customer="acme"))

    def fresh(spec, snapshot: str) -> int:
        return evidence.labelled_rows(warehouse, [spec], {"acme": snapshot})["acme"].fresh

    assert fresh(spec, "snapshot_acme") == 4
    assert evidence.labelled_rows(warehouse, [spec], {"acme": "snapshot_acme"})["acme"].snapshot_rows == 2
    without_ids = parse_spec(SPEC)
    # Without an id column, only rows after the snapshot's latest timestamp are new (the late label is missed).
    assert fresh(without_ids, "snapshot_acme") == 3
    assert fresh(spec, "no_snapshot_yet") == 0


def test_latest_drift_is_ordered_by_the_time_the_rows_describe_and_kept_to_one_model_version(warehouse):
    rows = pd.DataFrame(
        {
            "customer": ["acme"] * 4 + ["other"],
            "batch_id": ["b-late", "a-early", "c-middle", "d-old-model", "x"],
            "batch_start": pd.to_datetime(["2026-10-20", "2026-10-06", "2026-10-13", "2026-10-27", "2026-10-30"]),
            "rows": 100,
            "labelled_rows": 0,
            "drift_share": [0.7, 0.1, 0.6, 0.9, 0.9],
            "dataset_drifted": [True, False, True, True, True],
            "drifted_columns": "x",
            "model_version": ["3", "3", "3", "2", "3"],
            "measured_at": pd.Timestamp("2026-11-01"),
        }
    )
    warehouse.write("drift_batches", rows)
    latest = evidence.latest_drift(warehouse, {"acme": "3"}, limit=2)["acme"]
    assert [b.batch_id for b in latest] == ["b-late", "c-middle"]
    assert latest[0].batch_start == datetime(2026, 10, 20)
    assert triggers.drift_trigger("acme", latest, 2, 0.5).evidence_key == "c-middle+b-late@v3"


def test_no_evidence_tables_means_no_evidence(warehouse):
    assert evidence.latest_drift(warehouse, {"acme": "1"}, 2) == {"acme": []}
    assert evidence.recent_metrics(warehouse, {"acme": "1"}, {"acme": "roc_auc"}, 1) == {"acme": []}
    assert evidence.shadow_comparisons(warehouse, {"acme": "roc_auc"}) == {"acme": []}
    assert evidence.last_trainings(warehouse) == {}
    assert evidence.last_champion_moves(warehouse) == {}


# ---------------------------------------------------------------------------------------------------
# Alerts


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Collector.received
    server.shutdown()
    server.server_close()


def test_an_alert_goes_to_the_table_the_log_and_the_webhook(warehouse, webhook, caplog):
    url, received = webhook
    alert = alerts.Alert(NOW, "acme", alerts.DRIFT, "dataset drift in w3, w4", "run-1")
    with caplog.at_level(logging.WARNING, logger="retrain_platform.alerts"):
        assert alerts.record(warehouse, alert, url) is True

    stored = alerts.history(warehouse)
    assert stored.to_dict("records") == [
        {"recorded_at": pd.Timestamp(NOW), "customer": "acme", "kind": "drift", "message": "dataset drift in w3, w4",
         "dagster_run_id": "run-1"}
    ]  # fmt: skip
    assert "[retrain-platform] drift acme: dataset drift in w3, w4" in caplog.text
    ((content_type, body),) = received
    assert content_type == "application/json"
    assert body["text"] == "[retrain-platform] drift acme: dataset drift in w3, w4"
    assert (body["customer"], body["kind"], body["recorded_at"]) == ("acme", "drift", NOW.isoformat())


def test_a_broken_webhook_is_logged_and_never_fatal(warehouse, caplog):
    closed = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    url = f"http://127.0.0.1:{closed.server_port}/hook"
    closed.server_close()  # nothing listens there any more
    with caplog.at_level(logging.ERROR, logger="retrain_platform.alerts"):
        delivered = alerts.record(warehouse, alerts.Alert(NOW, None, alerts.RUN_FAILURE, "run x failed"), url, timeout=2)
    assert delivered is False
    assert alerts.history(warehouse, kind=alerts.RUN_FAILURE)["message"].tolist() == ["run x failed"]
    # The URL is a secret: the log names its host only, never its path.
    assert f"alert webhook at 127.0.0.1:{closed.server_port} failed" in caplog.text
    assert "/hook" not in caplog.text


def test_alert_history_filters_by_customer_and_kind(warehouse):
    for customer, kind in (("a", alerts.DRIFT), ("b", alerts.DRIFT), ("a", alerts.ROLLBACK)):
        alerts.record(warehouse, alerts.Alert(NOW, customer, kind, f"{customer} {kind}"))
    assert alerts.history(warehouse, "a")["message"].tolist() == ["a drift", "a rollback"]
    assert alerts.history(warehouse, kind=alerts.DRIFT)["message"].tolist() == ["a drift", "b drift"]


# ---------------------------------------------------------------------------------------------------
# The clock and the local Dagster settings


def test_the_clock_is_frozen_when_asked_and_always_naive_utc():
    assert Clock(frozen_at="2026-10-20T12:00").now() == datetime(2026, 10, 20, 12, 0)
    assert Clock(frozen_at="2026-10-20T14:00+02:00").now() == datetime(2026, 10, 20, 12, 0)
    real = Clock().now()
    assert real.tzinfo is None
    assert abs(real - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(seconds=5)


def test_the_local_dagster_yaml_queues_runs_one_at_a_time_and_one_per_customer():
    config = yaml.safe_load(settings.DAGSTER_YAML)["run_coordinator"]
    assert config["class"] == "QueuedRunCoordinator"
    assert config["config"]["max_concurrent_runs"] == 1
    assert config["config"]["tag_concurrency_limits"] == [
        {"key": settings.CUSTOMER_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]


def test_schedules_come_from_the_environment_and_bad_ones_name_the_variable(monkeypatch):
    assert settings.schedules() == settings.Schedules("0 2 * * *", "0 3 * * 1", "UTC")
    monkeypatch.setenv(settings.RETRAINING_SCHEDULE_ENV, "30 4 * * 0")
    assert settings.schedules().retraining == "30 4 * * 0"
    monkeypatch.setenv(settings.INFERENCE_SCHEDULE_ENV, "daily")
    with pytest.raises(ValueError, match="RETRAIN_INFERENCE_SCHEDULE: 'daily' is not a cron string"):
        settings.schedules()
