"""The daemon `onboard --wait` starts: one per home however many commands wait, stopped by the last one out."""

from __future__ import annotations

import os
import signal
import time

import dagster as dg
import pytest
from dagster._daemon.types import DaemonHeartbeat

from retrain_platform.local_daemon import DAEMONS, DaemonStopped, SharedDaemon, daemon_running, process_alive
from retrain_platform.settings import Home


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
