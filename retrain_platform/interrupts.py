"""A command stopped by a signal stops as Ctrl-C stops it: a run in progress is marked failed by Dagster itself
(an interrupted `execute_in_process` reports the run's failure), and the command ends after it."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> None:
    """Treat SIGTERM and SIGHUP as Ctrl-C (a `KeyboardInterrupt`). During a run Dagster maps them to its own
    interruption, and `runner.Runner.run_job` raises `KeyboardInterrupt` once the interrupted run is recorded."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
