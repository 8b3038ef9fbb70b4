"""Online scoring over real HTTP: a uvicorn server on a free localhost port, in front of a trained customer."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from retrain_platform import customers as customer_store
from retrain_platform import monitoring, serving
from retrain_platform.ingest import batch_partition_key, ingest
from retrain_platform.modelling import decision_threshold
from retrain_platform.registry import CHALLENGER, CHAMPION, LoggedModel
from retrain_platform.spec import parse_spec
from retrain_platform_tests.conftest import assert_one_line_error, cli

CUSTOMER = "lumen-streaming"
UNTRAINED = "corner-market"
CANARY_FRACTION = 0.25


class RunningServer:
    """A uvicorn server for an app, run in a thread of the test process, on a port the OS chose."""

    def __init__(self, app):
        self.server = serving.make_server(app, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(trained_customer, copy_platform, tmp_path_factory):
    """A copy of trained lumen-streaming (champion version 1) with a version 2 registered from the same model as
    its challenger, corner-market onboarded but never trained, and a server in front of them."""
    lumen = trained_customer(CUSTOMER)
    with copy_platform(lumen, tmp_path_factory.mktemp("serving")) as platform:
        platform.load_customer(UNTRAINED)
        registry, name = platform.registry, lumen.spec.model_name
        first = registry.client.get_model_version(name, "1")
        second = registry.register(name, LoggedModel(first.run_id, first.source), tags=dict(first.tags))
        registry.set_alias(name, CHALLENGER, second)
        service = serving.create_service(
            platform.warehouse, registry, alias_check_seconds=0.2, spec_check_seconds=0.2, flush_seconds=0.2,
            gauge_seconds=0.2,
        )
        with RunningServer(serving.create_app(service)) as server, requests.Session() as http:
            yield platform, lumen.spec, server, http, service


def feature_rows(platform, spec, count: int, start: int = 0) -> list[dict]:
    """Rows of the customer's first demo batch as JSON-ready dicts: features and id (no label)."""
    frame = platform.demo[spec.customer].batches[0].iloc[start : start + count]
    columns = [spec.id_column, *spec.feature_names]
    return [
        {name: (None if pd.isna(value) else value) for name, value in row.items()}
        for row in frame[columns].astype(object).to_dict("records")
    ]


def predict(http, server, customer: str, rows) -> requests.Response:
    return http.post(f"{server.url}/customers/{customer}/predict", json={"rows": rows}, timeout=30)


def wait_for(condition, what: str, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def answered_version(http, server, row: dict) -> str:
    response = predict(http, server, CUSTOMER, [row])
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["model_version"]


@pytest.mark.slow
def test_scores_rows_as_batch_scoring_does(served):
    platform, spec, server, http, _ = served
    rows = feature_rows(platform, spec, 5)
    response = predict(http, server, CUSTOMER, rows)

    assert response.status_code == 200, response.text
    answer = response.json()
    champion = platform.registry.load(spec.model_name, "1")
    assert answer["models"] == {"champion": {"model_version": "1", "decision_threshold": decision_threshold(champion)}}
    assert decision_threshold(champion) is not None  # lumen-streaming is binary: the cut-off travels with it
    predictions = answer["predictions"]
    assert [p["id"] for p in predictions] == [str(row[spec.id_column]) for row in rows]
    assert {(p["arm"], p["model_version"]) for p in predictions} == {("champion", "1")}
    frame = platform.demo[spec.customer].batches[0].iloc[:5]
    expected, scores = monitoring.prediction_scores(champion, frame[spec.feature_names], spec.task)
    assert [p["prediction"] for p in predictions] == [int(v) for v in expected]
    positive = str(champion.classes_[1])
    assert np.allclose([p["probabilities"][positive] for p in predictions], scores)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-9 for p in predictions)


@pytest.mark.slow
def test_refuses_with_status_and_reason(served):
    platform, spec, server, http, _ = served
    row = feature_rows(platform, spec, 1)[0]
    numeric = spec.numeric_features[0]

    unknown = predict(http, server, "nobody-here", [row])
    assert unknown.status_code == 404
    assert "unknown customer 'nobody-here'" in unknown.json()["error"]

    untrained = predict(http, server, UNTRAINED, [row])
    assert untrained.status_code == 409
    assert untrained.json()["error"] == (
        f"{UNTRAINED} has no champion: no model has been trained yet (retrain-platform train {UNTRAINED})"
    )

    missing = predict(http, server, CUSTOMER, [row, {k: v for k, v in row.items() if k != numeric}])
    assert missing.status_code == 422
    assert missing.json()["error"] == f"row 1: feature {numeric!r} is missing"

    mistyped = predict(http, server, CUSTOMER, [{**row, numeric: "twelve"}])
    assert mistyped.status_code == 422
    assert mistyped.json()["error"] == f"row 0: feature {numeric!r} must be a number, got 'twelve'"

    no_id = predict(http, server, CUSTOMER, [{k: v for k, v in row.items() if k != spec.id_column}])
    assert no_id.status_code == 422
    assert repr(spec.id_column) in no_id.json()["error"]

    for body in ({"row": [row]}, {"rows": []}, [row]):
        shapeless = http.post(f"{server.url}/customers/{CUSTOMER}/predict", json=body, timeout=30)
        assert shapeless.status_code == 422
        assert '"rows"' in shapeless.json()["error"]
    garbled = http.post(f"{server.url}/customers/{CUSTOMER}/predict", data=b"{not json", timeout=30)
    assert garbled.status_code == 400


@pytest.mark.slow
def test_a_moved_alias_answers_without_restart(served):
    platform, spec, server, http, _ = served
    row = feature_rows(platform, spec, 1)[0]
    registry, name = platform.registry, spec.model_name
    assert answered_version(http, server, row) == "1"

    registry.promote(name, "2")
    wait_for(lambda: answered_version(http, server, row) == "2", "the promoted version to answer")
    registry.rollback(name)
    wait_for(lambda: answered_version(http, server, row) == "1", "the rolled back version to answer")
    assert registry.alias_version(name, CHAMPION) == "1"


@pytest.mark.e2e
@pytest.mark.slow
def test_canary_share_and_the_warehouse_log(served):
    platform, spec, server, http, service = served
    rows = feature_rows(platform, spec, 1)
    customer_store.save_spec(platform.warehouse, parse_spec({**spec.model_dump(), "canary_fraction": CANARY_FRACTION}))
    try:
        probe = [{**rows[0], spec.id_column: f"probe-{n}"} for n in range(100)]
        wait_for(
            lambda: "challenger" in predict(http, server, CUSTOMER, probe).json()["models"],
            "the challenger to join the canary",
        )
        assert http.get(f"{server.url}/health", timeout=10).json()["customers"][CUSTOMER]["challenger"] == "2"
        arms = {}
        for number in range(2_000):
            row_id = f"canary-{number}"
            answer = predict(http, server, CUSTOMER, [{**rows[0], spec.id_column: row_id}]).json()["predictions"][0]
            assert answer["model_version"] == {"champion": "1", "challenger": "2"}[answer["arm"]]
            arms[row_id] = answer["arm"]
        share = sum(arm == "challenger" for arm in arms.values()) / len(arms)
        assert abs(share - CANARY_FRACTION) < 0.03, share
        again = predict(http, server, CUSTOMER, [{**rows[0], spec.id_column: f"canary-{n}"} for n in range(50)])
        assert [p["arm"] for p in again.json()["predictions"]] == [arms[f"canary-{n}"] for n in range(50)]
    finally:
        customer_store.save_spec(platform.warehouse, spec)
    assert service.predictions.flush() >= 0
    logged = serving.online_predictions(platform.warehouse, CUSTOMER)
    canary = logged[logged["row_id"].str.startswith("canary-")]
    assert len(canary) == 2_050
    first = canary.drop_duplicates("row_id").set_index("row_id")
    assert first["arm"].to_dict() == arms
    assert set(zip(canary["arm"], canary["model_version"])) == {("champion", "1"), ("challenger", "2")}
    assert canary["predicted_at"].notna().all() and canary["score"].between(0, 1).all()


@pytest.mark.slow
def test_metrics_count_requests_errors_latency_and_versions(served):
    platform, spec, server, http, _ = served
    row = feature_rows(platform, spec, 1)[0]
    predict(http, server, CUSTOMER, [row])
    predict(http, server, UNTRAINED, [row])
    response = http.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(name: str, **labels) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("retrain_serving_requests_total", customer=CUSTOMER, arm="champion") >= 1
    assert value("retrain_serving_rows_total", customer=CUSTOMER, arm="champion") >= 1
    assert value("retrain_serving_latency_seconds_count", customer=CUSTOMER, arm="champion") >= 1
    assert value("retrain_serving_latency_seconds_bucket", customer=CUSTOMER, arm="champion", le="+Inf") >= 1
    assert value("retrain_serving_errors_total", customer=UNTRAINED, arm="none", status="409") >= 1
    assert value("retrain_serving_model_version", customer=CUSTOMER, arm="champion") == 1.0
    health = http.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["customers"][CUSTOMER]["champion"] == "1"


@pytest.mark.slow
def test_metrics_carry_the_platforms_drift_metric_and_queue_gauges(served):
    platform, spec, server, http, _ = served
    batch = platform.demo[CUSTOMER].batches[1].copy()
    batch[spec.label_column] = batch[spec.label_column].astype(object)
    batch.loc[batch.index[-100:], spec.label_column] = None  # 400 labels: a realized metric; 100 rows to queue
    ingest(platform.warehouse, spec, batch, "gauged")
    key = batch_partition_key(CUSTOMER, "gauged")
    platform.instance.add_dynamic_partitions("batches", [key])
    run = platform.run_job("monitor_batch", key, {"ops": {"drift_report": {"config": {"chart": False}}}})
    assert run.success

    measured = platform.warehouse.query(
        'select "drift_share", "dataset_drifted" from "drift_batches" where "customer" = ? and "batch_id" = ?',
        [CUSTOMER, "gauged"],
    ).iloc[0]
    stored = platform.warehouse.query(
        'select "kind", "value" from "batch_metrics" where "customer" = ? and "batch_id" = ? and "model_role" = ? '
        'and "metric" = ?',
        [CUSTOMER, "gauged", "champion", spec.primary_metric],
    )
    expected = dict(zip(stored["kind"], stored["value"]))
    assert set(expected) == {"realized", "estimated"}

    drift_share = ("retrain_batch_drift_share", (("customer", CUSTOMER),))

    def gauges() -> dict | None:
        text = http.get(f"{server.url}/metrics", timeout=10).text
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("customer") == CUSTOMER
        }
        return samples if drift_share in samples else None

    found = wait_for(gauges, "the platform gauges to be read from the warehouse")
    assert found[drift_share] == pytest.approx(measured["drift_share"])
    assert found[("retrain_batch_dataset_drifted", (("customer", CUSTOMER),))] == float(bool(measured["dataset_drifted"]))
    for kind, value in expected.items():
        labels = (("customer", CUSTOMER), ("kind", kind), ("metric", spec.primary_metric))
        assert found[("retrain_batch_primary_metric", labels)] == pytest.approx(value)
    assert found[("retrain_labelling_queue_open_rows", (("customer", CUSTOMER),))] == 50


def test_platform_gauges_read_the_warehouse_at_most_every_refresh_seconds(warehouse, monkeypatch):
    reads = []
    real = monitoring.latest_batch_figures
    monkeypatch.setattr(monitoring, "latest_batch_figures", lambda *args: reads.append(1) or real(*args))
    now = [100.0]
    gauges = serving.PlatformGauges(warehouse, refresh_seconds=5.0, clock=lambda: now[0])
    for moment in (100.0, 101.0, 104.9, 105.0, 106.0):
        now[0] = moment
        gauges.refresh_if_due()
    assert len(reads) == 2
    assert [family.name for family in gauges.collect()][-1] == "retrain_platform_gauges_read_timestamp_seconds"


DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "retrain-platform.json"
METRIC_NAME = re.compile(r"\bretrain_[a-z0-9_]+\b")


def exported_series() -> set[str]:
    """Every series name `/metrics` can hold: the serving metrics and the platform gauges, with the suffixes
    prometheus_client gives each type."""
    metrics = serving.ServingMetrics()
    metrics.registry.register(serving.PlatformGauges(warehouse=None))
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"], "gauge": [""]}
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def test_every_grafana_panel_queries_metrics_the_server_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    expressions = []
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = METRIC_NAME.findall(target["expr"])
            assert names, f"panel {panel['title']!r}: {target['expr']!r} names no retrain metric"
            unknown = set(names) - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}, which serving.py does not export"
            expressions.append(target["expr"])
    variable = dashboard["templating"]["list"][1]["query"]["query"]
    assert set(METRIC_NAME.findall(variable)) <= exported
    joined = "\n".join(expressions)
    for needed in (
        "rate(retrain_serving_requests_total",
        "rate(retrain_serving_errors_total",
        "histogram_quantile(0.5, sum by (le, customer) (rate(retrain_serving_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, customer) (rate(retrain_serving_latency_seconds_bucket",
        "retrain_serving_model_version",
        "retrain_batch_drift_share",
        'kind="realized"',
        'kind="estimated"',
    ):
        assert needed in joined, f"no panel shows {needed}"
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_serve_command_answers_and_stops_on_sigterm(served, tmp_path):
    platform, spec, _, _, _ = served
    port = _free_port()
    process = cli("serve", "--port", str(port), home=platform.home.root, cwd=tmp_path, background=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stderr.read()
            try:
                return requests.get(f"{url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, "serve to answer /health", seconds=90)
        response = requests.post(
            f"{url}/customers/{CUSTOMER}/predict", json={"rows": feature_rows(platform, spec, 2)}, timeout=60
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 2

        taken = cli("serve", "--port", str(port), home=platform.home.root, cwd=tmp_path)
        assert_one_line_error(taken, f"cannot listen on 127.0.0.1:{port}", "choose another --port")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert out.splitlines()[0].startswith(f"serving {platform.home.root} on http://127.0.0.1:{port}")
    assert out.splitlines()[-1] == "stopped"


@pytest.mark.slow
def test_serve_without_a_home_fails_with_one_line(tmp_path):
    completed = cli("serve", "--home", str(tmp_path / "none"), home=tmp_path, cwd=tmp_path)
    assert_one_line_error(completed, "no platform home")


def test_concurrent_rows_are_scored_together_and_a_bad_request_fails_alone():
    calls = []
    release = threading.Event()

    def score(frame: pd.DataFrame) -> tuple:
        calls.append(len(frame))
        if len(calls) == 1:
            release.wait(10)  # the first call holds the model while the other requests queue
        if (frame["x"] < 0).any():
            raise ValueError("negative")
        return (frame["x"].to_numpy() * 2,)

    batcher = serving.ModelBatcher(score)
    results: dict[int, object] = {}

    def request(number: int) -> None:
        try:
            results[number] = batcher(pd.DataFrame({"x": [float(number)] * 2}))[0].tolist()
        except ValueError as error:
            results[number] = str(error)

    first = threading.Thread(target=request, args=(1,))
    first.start()
    wait_for(lambda: calls, "the first call")
    others = [threading.Thread(target=request, args=(n,)) for n in (2, 3, -4, 5)]
    for thread in others:
        thread.start()
    wait_for(lambda: len(batcher._queue) == 4, "the other requests to queue")
    release.set()
    for thread in [first, *others]:
        thread.join(10)
    assert results == {1: [2.0, 2.0], 2: [4.0, 4.0], 3: [6.0, 6.0], -4: "negative", 5: [10.0, 10.0]}
    assert calls[:2] == [2, 8]  # the four queued requests in one call, then alone after one of them failed
