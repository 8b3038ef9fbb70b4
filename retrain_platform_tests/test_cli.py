"""`retrain-platform` as a user runs it: a subprocess per command, state in a home under tmp_path."""

from __future__ import annotations

import json
import re

import pytest

from retrain_platform.demo_data import DEMO_CUSTOMER_NAMES
from retrain_platform.status import customer_status
from retrain_platform_tests.conftest import assert_one_line_error, cli

# The documented shape of `status --json`: exactly these keys, in this order.
STATUS_JSON_KEYS = [
    "customer",
    "mode",
    "champion_version",
    "primary_metric",
    "champion_metric",
    "last_verdict",
    "promotions",
    "onboarding",
    "quarantined_batches",
]

@pytest.fixture(scope="module")
def trained_home(trained_customer, copy_platform, tmp_path_factory):
    """A home where swiftcart-delivery is trained (in-process, small) and northwind-lending only onboarded."""
    with copy_platform(trained_customer("swiftcart-delivery"), tmp_path_factory.mktemp("cli")) as platform:
        platform.load_customer("northwind-lending")
        yield platform


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["status"], ["train"], ["replay"]], ids=["main", "demo", "status", "train", "replay"]
)
def test_help_works_on_every_command(command, tmp_path):
    completed = cli(*command, "--help", home=tmp_path / "unused", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"usage: retrain-platform {' '.join(command)}".rstrip())
    if command == ["replay"]:
        assert "--out" in completed.stdout  # each policy gets a home of its own under --out
    elif command:
        assert "--home" in completed.stdout
    else:
        assert all(name in completed.stdout for name in ("demo", "status", "train", "replay"))
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("how", ["env", "flag"])
def test_status_on_an_empty_home_fails_with_one_line(how, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["status", "--json"] + (["--home", str(empty)] if how == "flag" else [])
    completed = cli(*args, home=empty if how == "env" else tmp_path / "elsewhere", cwd=tmp_path)

    assert_one_line_error(completed, "no platform home", str(empty))
    assert completed.stderr.strip().count("\n") == 0  # nothing else on stderr, not even a warning
    assert completed.stdout == ""
    assert list(empty.iterdir()) == []  # looking does not create a home


@pytest.mark.e2e
@pytest.mark.slow
def test_status_json_after_training_lists_every_customer_with_the_documented_keys(trained_home, tmp_path):
    platform = trained_home
    completed = cli("status", "--home", str(platform.home.root), "--json", home=tmp_path / "not-this-one", cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    rows = json.loads(completed.stdout)
    assert isinstance(rows, list)
    assert [row["customer"] for row in rows] == ["northwind-lending", "swiftcart-delivery"]
    for row in rows:
        assert list(row) == STATUS_JSON_KEYS

    onboarded, trained = rows
    assert onboarded == {
        "customer": "northwind-lending",
        "mode": "approve",
        "champion_version": None,
        "primary_metric": "roc_auc",
        "champion_metric": None,
        "last_verdict": None,
        "promotions": 0,
        "onboarding": "ready",
        "quarantined_batches": 0,
    }
    assert trained["mode"] == "auto"
    assert trained["champion_version"] == "1"
    assert trained["primary_metric"] == "rmse"
    assert trained["last_verdict"] == "PROMOTE"
    assert trained["promotions"] == 1
    # The same numbers the library reports in-process.
    in_process = customer_status(platform.warehouse, platform.registry)
    assert rows == json.loads(json.dumps(in_process))
    assert 0 < trained["champion_metric"] < 12.0  # under the customer's RMSE floor


@pytest.mark.slow
def test_train_rejects_an_invalid_customer_id_with_one_line(trained_home, tmp_path):
    platform = trained_home
    versions_before = len(platform.registry.versions("retrain-swiftcart-delivery"))
    completed = cli("train", "Bad Customer!", "--home", str(platform.home.root), home=tmp_path / "unused", cwd=tmp_path)

    assert_one_line_error(completed, "invalid customer id", "'Bad Customer!'")
    assert completed.stdout == ""
    assert len(platform.registry.versions("retrain-swiftcart-delivery")) == versions_before


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("do not delete")

    completed = cli("demo", "--home", str(folder), home=tmp_path / "unused", cwd=tmp_path)

    assert_one_line_error(completed, "is not empty and was not made by retrain-platform")
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]
    assert (folder / "thesis.txt").read_text() == "do not delete"


# The demo replays weeks of batches after the first trainings (ingest, monitoring, sensor ticks); a full
# replay takes minutes, so the test replays one week: every stage runs, at a cost the default suite can carry.
DEMO_WEEKS = 1


@pytest.mark.e2e
@pytest.mark.slow
def test_demo_trains_every_demo_customer_and_status_shows_the_champions(tmp_path):
    home = tmp_path / "demo-home"
    completed = cli(
        "demo", "--home", str(home), "--batches", str(DEMO_WEEKS), home=tmp_path / "unused", cwd=tmp_path, timeout=900
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "FAILED" not in completed.stdout
    for name in DEMO_CUSTOMER_NAMES:
        assert re.search(rf"^trained {re.escape(name)}: run \w+ succeeded$", completed.stdout, re.MULTILINE)
    assert (home / ".retrain-home").exists()
    assert not (tmp_path / "unused").exists() and not (tmp_path / ".retrain").exists()

    status = cli("status", "--json", home=home, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = {row["customer"]: row for row in json.loads(status.stdout)}
    assert set(rows) == set(DEMO_CUSTOMER_NAMES)
    for name, row in rows.items():
        assert list(row) == STATUS_JSON_KEYS
        assert row["last_verdict"] in {"PROMOTE", "HOLD", "REJECT"}
        if name == "northwind-lending":
            # Approve mode: trained and judged, but nobody approved it, so nothing serves and no batch is scored.
            assert row["mode"] == "approve"
            assert (row["champion_version"], row["champion_metric"], row["promotions"]) == (None, None, 0)
            assert not re.search(rf"monitored {name}\.", completed.stdout)
        else:
            assert row["mode"] == "auto"
            assert row["champion_version"] is not None and row["champion_version"].isdigit()
            assert isinstance(row["champion_metric"], float)
            assert row["promotions"] >= 1
            # The champion scored the replayed week's batch.
            monitored = rf"^\s*monitored {re.escape(name)}\.week-1: run \w+ succeeded$"
            assert re.search(monitored, completed.stdout, re.MULTILINE)


@pytest.mark.e2e
@pytest.mark.slow
def test_rollback_with_a_webhook_applies_once_and_sends_the_alert(trained_customer, copy_platform, tmp_path):
    """A set webhook used to crash `rollback` after the move (an unresolved EnvVar); a re-run then undid it."""
    import http.server
    import threading

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the standard library's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        swiftcart = trained_customer("swiftcart-delivery")
        with copy_platform(swiftcart, tmp_path / "platform") as platform:
            assert platform.train("swiftcart-delivery").success
            platform.registry.promote(swiftcart.spec.model_name, "2")
            env_home = platform.home.root
        completed = cli(
            "rollback", "swiftcart-delivery", "--reason", "bad week", home=env_home, cwd=tmp_path,
            env={"RETRAIN_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{server.server_port}/hook"},
        )  # fmt: skip
    finally:
        server.shutdown()
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "champion rolled back 2 -> 1" in completed.stdout
    assert "Traceback" not in completed.stderr
    assert len(received) == 1 and received[0]["kind"] == "rollback" and "bad week" in received[0]["message"]


@pytest.mark.slow
@pytest.mark.e2e  # a whole command-line journey in subprocesses: the end-to-end lane
def test_a_cli_training_shows_no_library_warning_and_messages_no_numpy_repr(tmp_path):
    """Issue 10, case 14: MLflow's cloudpickle notice and database set-up lines reached the user's stderr on
    every `train`, and refusals showed `np.float64(1.0)` or `np.int64(5)` for a value."""
    from retrain_platform.demo_data import generate_customer_frame

    home = tmp_path / "home"
    history = generate_customer_frame("lumen-streaming", 400, start="2026-05-01", end="2026-08-01", rng=1)
    history["subscriber_id"] = range(1, len(history) + 1)
    history.assign(region=1.0).to_csv(tmp_path / "constant.csv", index=False)
    history.to_csv(tmp_path / "acme.csv", index=False)
    history.tail(20).assign(subscriber_id=[5000] * 2 + list(range(5002, 5020))).to_csv(tmp_path / "twice.csv", index=False)
    onboard = ("--label", "churned", "--id", "subscriber_id", "--mode", "auto")

    refused = cli("onboard", "initech", "--source", str(tmp_path / "constant.csv"), *onboard, home=home, cwd=tmp_path)
    assert_one_line_error(refused, "'region' (constant: 1.0)")
    onboarded = cli("onboard", "acme", "--source", str(tmp_path / "acme.csv"), *onboard, home=home, cwd=tmp_path)
    assert onboarded.returncode == 0, onboarded.stderr[-3000:]
    trained = cli("train", "acme", home=home, cwd=tmp_path, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    duplicated = cli("ingest", "acme", "--source", str(tmp_path / "twice.csv"), "--batch", "b1", home=home, cwd=tmp_path)
    assert_one_line_error(duplicated, "id 5000 appears more than once")

    assert "mlflow" not in trained.stderr.lower()  # a new home's MLflow database is made quietly
    for completed in (refused, onboarded, trained, duplicated):
        assert "warning" not in completed.stderr.lower(), completed.stderr
        assert "np." not in completed.stdout + completed.stderr
