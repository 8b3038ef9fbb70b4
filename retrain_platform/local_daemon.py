"""One Dagster daemon per home, shared by every `onboard --wait` that needs one.

Two daemons on one instance each run the backfill loop, so every backfill run is launched twice (two
trainings, two ledger rows). A user who onboards several customers at once from several terminals must
therefore get one daemon, started by the first command that finds none and stopped by the last one to
finish. Coordination is by `flock` on two files in the home, so a command that dies releases its share.
A command killed with SIGKILL cannot stop the daemon, so the daemon runs under a small supervisor that stops
it once no command holds a share any more.
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
ORPHAN_POLL_SECONDS = 5.0
START_LOCK = "daemon.start.lock"
USERS_LOCK = "daemon.users.lock"
PID_FILE = "daemon.pid"


def daemon_running(max_age_seconds: float = HEARTBEAT_MAX_AGE_SECONDS) -> bool:
    """Whether a Dagster daemon has ticked the sensors, backfills and run queue of this instance lately."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        beats = instance.get_daemon_heartbeats()
    now = time.time()
    return all(kind in beats and now - beats[kind].timestamp < max_age_seconds for kind in DAEMONS)


def start_daemon(home: Home) -> tuple[subprocess.Popen, Path]:
    """`dagster-daemon run` on this code location, under `supervise`, in a session of its own; its log goes to
    the home. The returned process is the supervisor, the leader of that session."""
    log_path = home.root / "logs" / "daemon.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    executable = Path(sys.executable).with_name("dagster-daemon")
    command = [
        sys.executable,
        "-m",
        "retrain_platform.local_daemon",
        str(log_path.parent),
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


class _Stop(Exception):
    """The supervisor was told to stop."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def _die_with_parent() -> None:
    """In the daemon's process: end it if its supervisor dies, even by SIGKILL (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def supervise(logs: Path, command: list[str], poll_seconds: float = ORPHAN_POLL_SECONDS) -> int:
    """Run the daemon `command` until it exits, this process is signalled, or no command uses it any more.

    No user is left when `logs/daemon.users.lock` can be taken exclusively under `logs/daemon.start.lock`, as
    in `SharedDaemon.__exit__`; outside that exit this only happens when the last user was killed. The daemon's
    whole session (its code servers too) is then stopped, and its pid file and heartbeats removed.
    """
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    daemon = subprocess.Popen(command, preexec_fn=_die_with_parent)
    orphaned = False
    try:
        while daemon.poll() is None and not orphaned:
            time.sleep(poll_seconds)
            with exclusive(logs / START_LOCK):
                orphaned = _no_user_left(logs)
                if orphaned:
                    _stop_session(daemon)
                    if _read_pid(logs / PID_FILE) == os.getpid():
                        (logs / PID_FILE).unlink()
                    _wipe_heartbeats()
                    print("retrain-platform: no command uses this daemon any more; stopped it", flush=True)
    except _Stop:
        pass
    finally:
        _stop_session(daemon)
    return 0 if orphaned else daemon.returncode


def _no_user_left(logs: Path) -> bool:
    with open(logs / USERS_LOCK, "a") as users:
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(users, fcntl.LOCK_UN)
        return True


def _stop_session(daemon: subprocess.Popen, timeout_seconds: float = 50.0) -> None:
    if daemon.poll() is not None:
        return
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpgrp(), signal.SIGTERM)
    try:
        daemon.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


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
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Exited but not yet reaped: a supervisor whose command was killed is reaped by init, maybe late."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


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
        self.pid_path = self.logs / PID_FILE
        self.log_path = self.logs / "daemon.log"
        self.started_here = False
        self._users = None

    def __enter__(self) -> SharedDaemon:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._users = open(self.logs / USERS_LOCK, "a")
        with exclusive(self.logs / START_LOCK):
            fcntl.flock(self._users, fcntl.LOCK_SH)
            self._start_if_none()
        return self

    def ensure(self) -> None:
        """Start a daemon again if ours exited on its own or no daemon beats any more."""
        pid = self._pid()
        if pid is not None and process_alive(pid):
            return
        with exclusive(self.logs / START_LOCK):
            pid = self._pid()
            if pid is not None and not process_alive(pid):
                self.pid_path.unlink(missing_ok=True)
                raise DaemonStopped(f"the Dagster daemon stopped; see {self.log_path}")
            self._start_if_none()

    def __exit__(self, *exc) -> None:
        with exclusive(self.logs / START_LOCK):
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
        return _read_pid(self.pid_path)

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


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[2:]))
