"""The daemon `onboard --wait` starts: one per home however many commands wait, stopped by the last one out, even
when that one was killed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat

from retrain_platform.demo_data import generate_customer_frame
from retrain_platform.local_daemon import DAEMONS, DaemonStopped, SharedDaemon, daemon_running, process_alive
from retrain_platform.settings import Home
from retrain_platform_tests.conftest import assert_one_line_error, cli


@pytest.fixture
def home(tmp_path, monkeypatch) -> Home:
    home = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("RETRAIN_HOME", str(home.root))
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    return home


def wait_until(predicate, timeout_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(1)


@pytest.mark.e2e
@pytest.mark.slow
def test_two_commands_share_one_daemon_and_the_last_one_out_stops_it(home):
    first = SharedDaemon(home).__enter__()
    pid = int(first.pid_path.read_text())
    try:
        second = SharedDaemon(home).__enter__()
        assert first.started_here and not second.started_here
        assert int(second.pid_path.read_text()) == pid
        wait_until(daemon_running)  # it really is a daemon of this instance: sensors, backfills, run queue beat

        first.__exit__(None, None, None)
        assert process_alive(pid), "the first command out must leave the daemon to the one still waiting"
        second.ensure()

        second.__exit__(None, None, None)
        assert not process_alive(pid) and not first.pid_path.exists()
        assert not daemon_running()  # its heartbeats are wiped, so a next command starts a new daemon at once
    finally:
        if process_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_a_daemon_the_user_runs_is_used_and_left_alone(home):
    with dg.DagsterInstance.get() as instance:
        for kind in DAEMONS:
            instance.add_daemon_heartbeat(DaemonHeartbeat(time.time(), kind, "users-daemon", None))
    with SharedDaemon(home) as daemon:
        assert not daemon.started_here and not daemon.pid_path.exists()
        daemon.ensure()
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_daemon_heartbeats()) == set(DAEMONS)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_daemon_that_dies_while_commands_wait_is_reported(home):
    daemon = SharedDaemon(home).__enter__()
    pid = int(daemon.pid_path.read_text())
    try:
        os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not process_alive(pid), timeout_seconds=30)
        with pytest.raises(DaemonStopped, match="daemon.log"):
            daemon.ensure()
    finally:
        daemon.__exit__(None, None, None)
    assert not daemon.pid_path.exists()


def session_processes(session: int) -> list[int]:
    """Live processes of a session: the daemon's supervisor, the daemon, its code servers and run workers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_onboard_wait_leaves_no_daemon_running(home, tmp_path, fast_backfills, signum):
    """Issue 10, case 12: `onboard --wait`, stopped while it waits, used to leave its daemon running for good."""
    source = tmp_path / "acme.csv"
    generate_customer_frame("lumen-streaming", 600, start="2026-05-01", end="2026-08-01", rng=1).to_csv(
        source, index=False
    )
    onboard = ("onboard", "acme", "--source", str(source), "--label", "churned", "--id", "subscriber_id")
    command = cli(*onboard, "--wait", home=home.root, cwd=tmp_path, env=fast_backfills, background=True)
    pid_path = home.root / "logs" / "daemon.pid"
    daemon = None
    try:
        wait_until(lambda: pid_path.exists() or command.poll() is not None, timeout_seconds=180)
        assert command.poll() is None, command.communicate()
        daemon = int(pid_path.read_text())
        wait_until(daemon_running, timeout_seconds=180)

        command.send_signal(signum)
        _, stderr = command.communicate(timeout=120)
        if signum == signal.SIGTERM:
            assert command.returncode == 130 and "interrupted" in stderr, stderr
            assert not process_alive(daemon), "the last user out stops the daemon"
        else:
            assert command.returncode == -signal.SIGKILL
            wait_until(lambda: not process_alive(daemon), timeout_seconds=90)  # its supervisor saw no user left
            assert "no command uses this daemon any more" in (home.root / "logs" / "daemon.log").read_text()
        wait_until(lambda: not session_processes(daemon), timeout_seconds=30)  # code servers and run workers too
        assert not pid_path.exists()
        assert not daemon_running(), "its heartbeats are wiped, so the next command starts a daemon at once"

        again = cli(*onboard, home=home.root, cwd=tmp_path)
        assert_one_line_error(again, "already being onboarded", "dagster dev")
        if signum == signal.SIGKILL:
            # `--wait` again re-attaches to the onboarding in progress and waits for it to the end.
            resumed = cli(*onboard, "--wait", home=home.root, cwd=tmp_path, env=fast_backfills, timeout=900)
            assert resumed.returncode == 0, resumed.stderr
            assert "acme: already being onboarded (" in resumed.stdout
            assert "waiting for it with the source and options given then" in resumed.stdout
            status = json.loads(cli("status", "--json", home=home.root, cwd=tmp_path).stdout)
            assert [row["onboarding"] for row in status if row["customer"] == "acme"] == ["ready"]
            assert not pid_path.exists(), "the re-attached wait stopped the daemon it started"
    finally:
        if command.poll() is None:
            command.kill()
        if daemon is not None and session_processes(daemon):
            os.killpg(daemon, signal.SIGKILL)
            pytest.fail("the daemon's session was still running")
