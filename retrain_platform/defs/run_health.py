"""Runs that a command executes in its own process carry that process's identity, so that a run whose process
was killed is marked failed instead of staying STARTED forever.

Dagster's run monitoring watches the runs its run launcher started (the daemon's and the UI's); a run that a
CLI command, the demo or a replay executes in-process has no launcher to ask. A killed process cannot report
its own death, so the next command or sensor tick on the same host does: `fail_dead_runs`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dagster as dg

WORKER_TAG = "retrain/worker"
IN_FLIGHT = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _start_ticks(pid: int) -> str:
    """When the process started (Linux clock ticks since boot), to tell a reused pid from the one that ran."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name in parentheses may hold spaces; the fields after it are space-separated.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def worker_tags() -> dict[str, str]:
    """Tags for a run executed in this process: host, pid and the process's start."""
    pid = os.getpid()
    return {WORKER_TAG: f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"}


def _worker_is_dead(tag: str) -> bool:
    host, _, rest = tag.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's process: only that machine can tell
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return bool(started) and _start_ticks(pid) not in ("", started)


def fail_dead_runs(instance: dg.DagsterInstance, customer: str | None = None) -> list[str]:
    """Mark failed every in-flight run (of one customer's partition, if given) whose process on this host
    is gone; returns their run ids."""
    tags = {"dagster/partition": customer} if customer else {}
    records = instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT, tags=tags))
    failed = []
    for record in records:
        run = record.dagster_run
        tag = run.tags.get(WORKER_TAG)
        if tag and _worker_is_dead(tag):
            pid = tag.split(":")[1]
            instance.report_run_failed(
                run, f"the process that executed this run (pid {pid}) ended before the run did: killed or crashed"
            )
            failed.append(run.run_id)
    return failed
