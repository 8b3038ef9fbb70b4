"""One Dagster daemon per home, shared by every `onboard --wait` that needs one.

Two daemons on one instance each run the backfill loop, so every backfill run is launched twice (two
trainings, two ledger rows). A user who onboards several customers at once from several terminals must
therefore get one daemon, started by the first command that finds none and stopped by the last one to
finish. Coordination is by `flock` on two files in the home, so a command that dies releases its share.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from retrain_platform.settings import Home

DAEMONS = ("SENSOR", "BACKFILL", "QUEUED_RUN_COORDINATOR")
# Dagster daemons beat every 30 s; three missed beats mean no daemon.
HEARTBEAT_MAX_AGE_SECONDS = 90.0


def daemon_running(max_age_seconds: float = HEARTBEAT_MAX_AGE_SECONDS) -> bool:
    """Whether a Dagster daemon has ticked the sensors, backfills and run queue of this instance lately."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        beats = instance.get_daemon_heartbeats()
    now = time.time()
    return all(kind in beats and now - beats[kind].timestamp < max_age_seconds for kind in DAEMONS)


def start_daemon(home: Home) -> tuple[subprocess.Popen, Path]:
    """`dagster-daemon run` on this code location in a session of its own; its log goes to the home."""
    log_path = home.root / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    executable = Path(sys.executable).with_name("dagster-daemon")
    command = [
        str(executable) if executable.exists() else "dagster-daemon",
        "run",
        "-m",
        "retrain_platform.definitions",
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), cwd=home.root, start_new_session=True
        )
    return process, log_path


def stop_daemon(pid: int, timeout_seconds: float = 60.0) -> None:
    """SIGTERM the daemon's session (it and its code servers), SIGKILL if it has not gone in time."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def process_alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps it if it is our child and has exited
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: started by another command
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class DaemonStopped(Exception):
    """The daemon a command started exited while commands still rely on it."""


@contextmanager
def exclusive(path: Path):
    """Hold an exclusive `flock` on `path` (made if missing) for the block; released if the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SharedDaemon:
    """Make sure one daemon runs for a home while commands wait on it; the last one out stops the one started.

    `logs/daemon.start.lock` serializes starting and stopping; every waiting command holds
    `logs/daemon.users.lock` shared, so a command that can take it exclusively is the last user.
    `logs/daemon.pid` names the daemon a command started (none when the user runs their own).
    """

    def __init__(self, home: Home):
        self.home = home
        self.logs = home.root / "logs"
        self.pid_path = self.logs / "daemon.pid"
        self.log_path = self.logs / "daemon.log"
        self.started_here = False
        self._users = None

    def __enter__(self) -> SharedDaemon:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._users = open(self.logs / "daemon.users.lock", "a")
        with exclusive(self.logs / "daemon.start.lock"):
            fcntl.flock(self._users, fcntl.LOCK_SH)
            self._start_if_none()
        return self

    def ensure(self) -> None:
        """Start a daemon again if ours exited on its own or no daemon beats any more."""
        pid = self._pid()
        if pid is not None and process_alive(pid):
            return
        with exclusive(self.logs / "daemon.start.lock"):
            pid = self._pid()
            if pid is not None and not process_alive(pid):
                self.pid_path.unlink(missing_ok=True)
                raise DaemonStopped(f"the Dagster daemon stopped; see {self.log_path}")
            self._start_if_none()

    def __exit__(self, *exc) -> None:
        with exclusive(self.logs / "daemon.start.lock"):
            fcntl.flock(self._users, fcntl.LOCK_UN)
            try:
                fcntl.flock(self._users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # other commands still wait on the daemon; the last of them stops it
            else:
                pid = self._pid()
                if pid is not None:
                    stop_daemon(pid)
                    self.pid_path.unlink(missing_ok=True)
                    # Its last heartbeats would make the next command believe a daemon still runs.
                    _wipe_heartbeats()
                fcntl.flock(self._users, fcntl.LOCK_UN)
        self._users.close()

    def _pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _start_if_none(self) -> None:
        pid = self._pid()
        if pid is not None and process_alive(pid):
            return
        self.pid_path.unlink(missing_ok=True)
        if daemon_running():
            return
        process, _ = start_daemon(self.home)
        self.pid_path.write_text(f"{process.pid}\n")
        self.started_here = True


def _wipe_heartbeats() -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        instance.wipe_daemon_heartbeats()
