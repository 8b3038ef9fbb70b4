"""Replay: what a retraining policy would have done on a dataset's own history.

The first model trains on an initial window; the rest of the history then arrives one batch at a time, in
time order, as production would see it. Each batch lands without labels and is checked, scored and
measured; the policy's sensors tick at the batch's time and whatever they request runs; then the batch's
labels arrive through the late-label path, its realized metric is measured, and the sensors tick again.

Each policy runs on the real platform in a home of its own (warehouse, MLflow registry, Dagster instance),
in a process of its own, so policies run side by side. Nothing here re-implements the loop: the batches,
sensors, gates and ledger are the platform's, driven through `retrain_platform.runner`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import queue as queue_module
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from retrain_platform import evaluation, ledger
from retrain_platform.onboarding import OnboardingError, OnboardingRequest, prepare
from retrain_platform.spec import AUTO_MODE, CustomerSpec, SpecError, parse_spec

NEVER, SCHEDULED, DRIFT, PERFORMANCE, DEFAULT, ALWAYS = "never", "scheduled", "drift", "performance", "default", "always"
POLICIES = (NEVER, SCHEDULED, DRIFT, PERFORMANCE, DEFAULT, ALWAYS)
POLICIES_BY_COST = (ALWAYS, DEFAULT, SCHEDULED, DRIFT, PERFORMANCE, NEVER)
REPLAY_CUSTOMER = "replay"
REPLAY_TRIGGER = "replay"
FIRST_TRAINING = f"{REPLAY_TRIGGER}: first training"
BATCH_PREFIX = "batch-"
# `auto` batches: the finest calendar period that cuts what follows the initial window into at most this many.
MAX_AUTO_BATCHES = 36
DEFAULT_INITIAL_SHARE = 0.3
JSON_KEYS = ("policy", "metric", "mean_metric", "min_metric", "retrains", "promotions", "metric_by_batch", "compute_s")
HOME_MARKER = ".retrain-replay"
LOG_NAME = "replay.log"
# The home where the first model is trained once; every policy's home starts as a copy of it.
FIRST_MODEL_HOME = "first-model"

_UNITS = {"d": "day", "w": "week", "m": "month", "q": "quarter", "y": "year"}
_SIZE = re.compile(r"^(\d+)?\s*([a-z]+)$")


class ReplayError(ValueError):
    """The request cannot be replayed; the message names the option or column and what to change."""


@dataclass(frozen=True)
class Size:
    """A window or batch size: a number of rows, or a number of calendar units (day ... year)."""

    rows: int | None = None
    count: int = 1
    unit: str | None = None

    @property
    def offset(self) -> pd.DateOffset:
        if self.unit == "quarter":
            return pd.DateOffset(months=3 * self.count)
        return pd.DateOffset(**{f"{self.unit}s": self.count})

    def __str__(self) -> str:
        if self.rows is not None:
            return f"{self.rows} rows"
        return f"{self.count} {self.unit}{'s' if self.count > 1 else ''}"


def parse_size(text: str, option: str) -> Size:
    """`500` (rows), `month`, `6 months`, `2w`, `1y`: refuse anything else naming the option."""
    cleaned = str(text).strip().lower()
    if cleaned.isdigit():
        if int(cleaned) < 1:
            raise ReplayError(f"{option}: {text!r} must be at least 1 row")
        return Size(rows=int(cleaned))
    match = _SIZE.fullmatch(cleaned)
    unit = match.group(2) if match else ""
    unit = _UNITS.get(unit, unit.removesuffix("s"))
    if not match or unit not in _UNITS.values():
        raise ReplayError(
            f"{option}: {text!r} is neither a number of rows nor a period (day, week, month, quarter, year, "
            "optionally with a count: '6 months', '2w')"
        )
    count = int(match.group(1) or 1)
    if count < 1:
        raise ReplayError(f"{option}: {text!r} must be at least one {unit}")
    return Size(count=count, unit=unit)


@dataclass
class ReplayBatch:
    batch_id: str
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame

    @property
    def arrives_at(self) -> pd.Timestamp:
        """When the batch is complete: the end of its period, or its last row."""
        return self.end


@dataclass
class ReplayPlan:
    """A validated dataset cut into the first model's window and the batches that follow it."""

    spec: CustomerSpec
    initial: pd.DataFrame
    batches: list[ReplayBatch]
    initial_end: pd.Timestamp
    batch_size: Size
    source_rows: int
    added_id: bool = False

    @property
    def metric(self) -> str:
        return self.spec.primary_metric


@dataclass
class PolicyResult:
    """What one policy did over the replay, read back from its home's ledger and batch metrics."""

    policy: str
    metric: str
    metric_by_batch: list[float | None]
    retrains: int = 0
    promotions: int = 0
    holds: int = 0
    rejections: int = 0
    rollbacks: int = 0
    compute_s: float = 0.0
    elapsed_s: float = 0.0
    events: list[dict] = field(default_factory=list)
    home: str = ""
    error: str | None = None

    @property
    def measured(self) -> list[float]:
        return [value for value in self.metric_by_batch if value is not None]

    @property
    def mean_metric(self) -> float | None:
        return float(np.mean(self.measured)) if self.measured else None

    @property
    def min_metric(self) -> float | None:
        """The worst batch: the lowest value, or the highest for error metrics."""
        if not self.measured:
            return None
        return float(np.max(self.measured) if lower_is_better(self.metric) else np.min(self.measured))

    def to_json(self) -> dict:
        values = {
            "policy": self.policy,
            "metric": self.metric,
            "mean_metric": _rounded(self.mean_metric),
            "min_metric": _rounded(self.min_metric),
            "retrains": self.retrains,
            "promotions": self.promotions,
            "metric_by_batch": [_rounded(value) for value in self.metric_by_batch],
            "compute_s": round(self.compute_s, 1),
        }
        return {key: values[key] for key in JSON_KEYS}


def lower_is_better(metric: str) -> bool:
    return metric in ("rmse", "mae", "log_loss")


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 4)


# ------------------------------------------------------------------------------------------------ planning


def plan_replay(
    frame: pd.DataFrame,
    *,
    label: str,
    timestamp: str | None = None,
    id_column: str | None = None,
    batch: str = "auto",
    initial: str | None = None,
    spec_overrides: dict | None = None,
) -> ReplayPlan:
    """Validate and infer as `onboard` does, then cut the history in time order into the initial window and
    the batches. A dataset without an id column gets one (`row_id`): late labels need to find their rows."""
    added_id = id_column is None
    if added_id:
        id_column = _free_name(frame, "row_id")
        frame = frame.assign(**{id_column: np.arange(1, len(frame) + 1)})
    request = OnboardingRequest(
        customer=REPLAY_CUSTOMER, label=label, timestamp=timestamp, id_column=id_column, mode=AUTO_MODE
    )
    try:
        prepared = prepare(frame, request)
    except OnboardingError as error:
        raise ReplayError(str(error)) from None
    spec = prepared.spec
    if spec_overrides:
        try:
            spec = parse_spec({**spec.model_dump(), **spec_overrides})
        except SpecError as error:
            raise ReplayError(str(error)) from None
    history = prepared.history.drop(columns=["batch_id"]).sort_values(spec.timestamp_column, kind="stable")
    history = history.reset_index(drop=True)
    times = history[spec.timestamp_column]

    if initial is None:
        cut = max(int(len(history) * DEFAULT_INITIAL_SHARE), spec.min_training_rows)
        initial_size = Size(rows=cut)
    else:
        initial_size = parse_size(initial, "--initial")
    if initial_size.rows is not None:
        cut = min(initial_size.rows, len(history))
        initial_end = times.iloc[cut] if cut < len(history) else times.iloc[-1] + pd.Timedelta(seconds=1)
    else:
        initial_end = times.iloc[0].normalize() + initial_size.offset
        cut = int((times < initial_end).sum())
    first = history.iloc[:cut]
    rest = history.iloc[cut:]
    labelled = int(first[spec.label_column].notna().sum())
    if labelled < spec.min_training_rows:
        raise ReplayError(
            f"--initial: the first window ({initial_size}) holds {labelled:,} labelled row(s); the first model needs "
            f"at least {spec.min_training_rows:,}: choose a longer --initial"
        )
    if rest.empty:
        raise ReplayError(f"--initial: the first window ({initial_size}) holds the whole history; nothing is left to replay")

    batch_size = _auto_batch(rest[spec.timestamp_column], initial_end) if batch == "auto" else parse_size(batch, "--batch")
    batches = _cut_batches(rest, spec.timestamp_column, initial_end, batch_size)
    return ReplayPlan(
        spec=spec,
        initial=first.reset_index(drop=True),
        batches=batches,
        initial_end=initial_end,
        batch_size=batch_size,
        source_rows=len(frame),
        added_id=added_id,
    )


def _free_name(frame: pd.DataFrame, name: str) -> str:
    candidate, number = name, 1
    while candidate in frame.columns:
        number += 1
        candidate = f"{name}_{number}"
    return candidate


def _auto_batch(times: pd.Series, start: pd.Timestamp) -> Size:
    for unit in ("day", "week", "month", "quarter", "year"):
        size = Size(unit=unit)
        if len(_boundaries(times, start, size)) - 1 <= MAX_AUTO_BATCHES:
            return size
    return Size(unit="year")


def _boundaries(times: pd.Series, start: pd.Timestamp, size: Size) -> list[pd.Timestamp]:
    edges = [start]
    last = times.max()
    while edges[-1] <= last:
        edges.append(edges[-1] + size.offset)
    return edges


def _cut_batches(rest: pd.DataFrame, timestamp: str, start: pd.Timestamp, size: Size) -> list[ReplayBatch]:
    pieces: list[tuple[pd.Timestamp, pd.Timestamp, pd.DataFrame]] = []
    times = rest[timestamp]
    if size.rows is not None:
        for begin in range(0, len(rest), size.rows):
            piece = rest.iloc[begin : begin + size.rows]
            piece_times = piece[timestamp]
            pieces.append((piece_times.min(), piece_times.max(), piece))
    else:
        edges = _boundaries(times, start, size)
        for begin, end in zip(edges[:-1], edges[1:], strict=True):
            piece = rest[(times >= begin) & (times < end)]
            if len(piece):
                pieces.append((begin, end, piece))
    width = max(3, len(str(len(pieces))))
    return [
        ReplayBatch(f"{BATCH_PREFIX}{number:0{width}d}", begin, end, piece.reset_index(drop=True))
        for number, (begin, end, piece) in enumerate(pieces, start=1)
    ]


# ------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class PolicyOptions:
    every: int = 4
    search: dict | None = None


def policy_sensors(policy: str) -> tuple[str, ...]:
    """The sensors a policy ticks. Policies differ in when they retrain; every policy that retrains keeps
    the platform's safety net, the automatic rollback of a promotion that then does worse in shadow."""
    from retrain_platform.defs.automation import AUTO_ROLLBACK_SENSOR, DRIFT_SENSOR, PERFORMANCE_SENSOR
    from retrain_platform.runner import SHIPPED_SENSORS

    return {
        NEVER: (),
        SCHEDULED: (AUTO_ROLLBACK_SENSOR,),
        DRIFT: (DRIFT_SENSOR, AUTO_ROLLBACK_SENSOR),
        PERFORMANCE: (PERFORMANCE_SENSOR, AUTO_ROLLBACK_SENSOR),
        DEFAULT: SHIPPED_SENSORS,
        ALWAYS: (AUTO_ROLLBACK_SENSOR,),
    }[policy]


def retrains_after(policy: str, batch_number: int, total: int, every: int) -> bool:
    """`always` and `scheduled` retrain once a batch's labels are in; never after the last batch."""
    if batch_number >= total:
        return False
    return policy == ALWAYS or (policy == SCHEDULED and batch_number % every == 0)


@dataclass
class Step:
    """What one step of time did: each file ingested (`runner.BatchOutcome`) and each sensor firing."""

    batches: list = field(default_factory=list)
    firings: list = field(default_factory=list)


def arrive(runner, arrivals: list, sensors: tuple[str, ...], cursors: dict, clock, search: dict | None = None) -> Step:
    """One step of time: each (spec, batch) lands without labels and is checked, scored and measured; the
    sensors tick and what they request runs; the labels arrive and their batches are measured again; the
    sensors tick once more."""
    step = Step()
    for spec, batch in arrivals:
        unlabelled = batch.frame.drop(columns=[spec.label_column])
        step.batches.append(runner.ingest_and_monitor(spec, unlabelled, batch.batch_id, clock=clock))
    step.firings += runner.tick(sensors, cursors, clock, search=search)
    for spec, batch in arrivals:
        labels = batch.frame.loc[batch.frame[spec.label_column].notna(), [spec.id_column, spec.label_column]]
        if len(labels):
            step.batches.append(runner.ingest_and_monitor(spec, labels, f"{batch.batch_id}-labels", clock=clock))
    step.firings += runner.tick(sensors, cursors, clock, search=search)
    return step


def replay_policy(
    plan: ReplayPlan, policy: str, home_root: Path, options: PolicyOptions, progress: Callable[[int, int], None]
) -> PolicyResult:
    """Walk the plan's batches under one policy in the home at `home_root`, which already holds the first
    model (see `train_first_model`). Must run in a process whose `RETRAIN_HOME` is that home before the code
    location is imported (see `run_policy_process`)."""
    from retrain_platform import ledger, monitoring
    from retrain_platform.defs.resources import Clock
    from retrain_platform.runner import Runner

    spec = plan.spec
    started = time.perf_counter()
    result = PolicyResult(policy=policy, metric=plan.metric, metric_by_batch=[], home=str(home_root))
    sensors, cursors = policy_sensors(policy), {}
    total = len(plan.batches)

    def clock_at(moment: pd.Timestamp) -> Clock:
        return Clock(frozen_at=pd.Timestamp(moment).isoformat())

    with Runner.open(keep_warehouse_open=True, charts=False) as runner:
        _check_bound_to(runner, home_root)
        if not runner.has_customer_partition(spec.customer):
            raise ReplayError(f"{home_root} holds no first model: copy it from the first model's home (see `replay`)")
        for number, batch in enumerate(plan.batches, start=1):
            clock = clock_at(batch.arrives_at)
            step = arrive(runner, [(spec, batch)], sensors, cursors, clock, search=options.search)
            compute = sum(firing.run.seconds for firing in step.firings)
            if retrains_after(policy, number, total, options.every):
                outcome = runner.train(spec.customer, trigger=f"{REPLAY_TRIGGER}: {policy}", clock=clock, search=options.search)
                compute += outcome.seconds
            result.compute_s += compute
            progress(number, total)

        realized = monitoring.metric_history(runner.warehouse, spec.customer, spec.primary_metric)
        realized = realized[realized["kind"] == "realized"]
        by_batch = dict(zip(realized["batch_id"], realized["value"].astype(float), strict=True))
        result.metric_by_batch = [_finite_or_none(by_batch.get(batch.batch_id)) for batch in plan.batches]
        _count_decisions(result, ledger.history(runner.warehouse, spec.customer), plan)
    result.elapsed_s = time.perf_counter() - started
    return result


def train_first_model(plan: ReplayPlan, home_root: Path, options: PolicyOptions) -> None:
    """Register the customer on the initial window and train its first model, in the home at `home_root`
    (the same process rule as `replay_policy`). Done once for all policies: they start from the very same
    model, and none pays for it again."""
    from retrain_platform.defs.resources import Clock
    from retrain_platform.runner import Runner, RunFailed

    spec = plan.spec
    with Runner.open(keep_warehouse_open=True, charts=False) as runner:
        _check_bound_to(runner, home_root)
        runner.add_customer(spec, plan.initial)
        clock = Clock(frozen_at=pd.Timestamp(plan.initial_end).isoformat())
        first = runner.train(spec.customer, trigger=FIRST_TRAINING, clock=clock, search=options.search)
        if not first.success:
            raise RunFailed(f"the first training failed (run {first.run_id}): {first.failure}")


def _check_bound_to(runner, home_root: Path) -> None:
    from retrain_platform.settings import Home

    bound = getattr(runner.defs.resources["warehouse"], "database", None)
    if bound is not None and Path(bound) != Home(home_root).warehouse_path:
        raise ReplayError(f"this process's code location writes to {bound}, not to the policy's home {home_root}")


def copy_home(source: Path, target: Path) -> None:
    """`target` becomes a home of its own holding what `source` holds (its warehouse, registry and Dagster
    instance); only MLflow keeps absolute paths, which move with it."""
    from retrain_platform.registry import move_local_store
    from retrain_platform.settings import Home

    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(LOG_NAME))
    move_local_store(Home(target).mlflow_db, str(source), str(target))


def _finite_or_none(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _count_decisions(result: PolicyResult, history: pd.DataFrame, plan: ReplayPlan) -> None:
    """Retrains, promotions, holds, rejections and rollbacks from the ledger, each placed at its batch."""
    arrivals = [batch.arrives_at for batch in plan.batches]
    for row in history.itertuples():
        if row.trigger == FIRST_TRAINING:
            continue
        at = pd.Timestamp(row.recorded_at)
        batch_number = next((n for n, arrival in enumerate(arrivals, start=1) if arrival >= at), len(arrivals))
        result.events.append(
            {"batch": batch_number, "action": row.action, "verdict": row.verdict, "trigger": row.trigger}
        )
        if row.action in ledger.TRAINING_ACTIONS:
            result.retrains += 1
        result.promotions += row.action == ledger.PROMOTE
        result.holds += row.verdict == evaluation.HOLD
        result.rejections += row.verdict == evaluation.REJECT
        result.rollbacks += row.action == ledger.ROLLBACK


_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _enter_home(home_root: str) -> None:
    """Point this process at the home at `home_root`, before the code location is imported."""
    from retrain_platform.settings import Home

    Home(Path(home_root)).ensure().export_environment()
    _log_to(Path(home_root) / LOG_NAME)
    # threadpoolctl limits only the libraries loaded when a limit is set, and scikit-learn's OpenMP runtime
    # loads with its modules: import them before `run_policy_process` sets its limit.
    importlib.import_module("retrain_platform.runner")


def _one_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def run_first_model_process(plan: ReplayPlan, home_root: str, options: PolicyOptions) -> str | None:
    """The body of the process that trains the first model; the error's line if it failed."""
    _enter_home(home_root)
    try:
        train_first_model(plan, Path(home_root), options)
    except Exception as error:  # reported as every policy's error
        return _one_line(error)
    return None


def run_policy_process(plan: ReplayPlan, policy: str, home_root: str, options: PolicyOptions) -> PolicyResult:
    """The body of one policy's process: point it at its own home, then replay."""
    _enter_home(home_root)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if _progress_queue is not None:
            _progress_queue.put((policy, done, total, time.perf_counter() - started))

    try:
        # One thread per policy process: the policies already share the cores, and OpenMP and BLAS threads
        # fighting over them made every training several times slower.
        with threadpool_limits(1):
            return replay_policy(plan, policy, Path(home_root), options, progress)
    except Exception as error:  # one policy's failure is reported with the others' results
        return PolicyResult(policy=policy, metric=plan.metric, metric_by_batch=[], home=home_root, error=_one_line(error))


def check_policies(policies: list[str]) -> list[str]:
    unknown = [policy for policy in policies if policy not in POLICIES]
    if unknown or not policies:
        raise ReplayError(f"--policies: {', '.join(unknown) or 'none given'} is not one of {', '.join(POLICIES)}")
    return policies


def _log_to(path: Path) -> None:
    """What the libraries print in a policy's process goes to its home's log, not over the progress lines."""
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (1, 2):
        os.dup2(log, stream)
    os.close(log)


def replay(
    plan: ReplayPlan,
    policies: list[str],
    out_dir: Path,
    options: PolicyOptions,
    workers: int | None = None,
    on_progress: Callable[[str, int, int, float], None] | None = None,
) -> list[PolicyResult]:
    """Train the first model once, then run each policy in its own process and home under `out_dir/homes`
    (a copy of the first model's), at most `workers` at once."""
    check_policies(policies)
    homes = out_dir / "homes"
    first_model_home = homes / FIRST_MODEL_HOME
    for folder in [first_model_home, *(homes / policy for policy in policies)]:
        _fresh_dir(folder)
    workers = max(1, min(workers or os.cpu_count() or 1, len(policies)))
    # The first model trains alone and may search on every core; then each policy's process works
    # single-threaded, and the policies in parallel are what use the cores.
    first_options = PolicyOptions(every=options.every, search={"search_jobs": workers, **(options.search or {})})
    options = PolicyOptions(every=options.every, search={"search_jobs": 1, **(options.search or {})})
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    results: dict[str, PolicyResult] = {}
    # One process per home, never reused: the code location binds to the home it was imported with.
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(progress_queue,), max_tasks_per_child=1
    )
    with pool:
        error = pool.submit(run_first_model_process, plan, str(first_model_home), first_options).result()
        if error is not None:
            return [
                PolicyResult(policy=policy, metric=plan.metric, metric_by_batch=[], home=str(homes / policy), error=error)
                for policy in policies
            ]
        for policy in policies:
            copy_home(first_model_home, homes / policy)
        # The costliest policies first, so that they do not start last and run alone at the end.
        by_cost = sorted(policies, key=lambda policy: POLICIES_BY_COST.index(policy))
        futures = {
            pool.submit(run_policy_process, plan, policy, str(homes / policy), options): policy for policy in by_cost
        }
        pending = set(futures)
        while pending:
            try:
                policy, done, total, elapsed = progress_queue.get(timeout=1.0)
                if on_progress:
                    on_progress(policy, done, total, elapsed)
            except queue_module.Empty:
                pass
            for future in [f for f in pending if f.done()]:
                pending.discard(future)
                results[futures[future]] = future.result()
    return [results[policy] for policy in policies]


def _fresh_dir(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / HOME_MARKER).exists():
            raise ReplayError(f"--out: {folder} is not empty and was not made by replay; choose another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HOME_MARKER).write_text("made by retrain-platform replay\n")


# ------------------------------------------------------------------------------------------------- reports


def summary_table(results: list[PolicyResult]) -> pd.DataFrame:
    """A row per policy: mean and worst batch metric, and what the policy spent and decided."""
    rows = []
    for result in results:
        rows.append(
            {
                "policy": result.policy,
                f"mean {result.metric}": _rounded(result.mean_metric),
                f"worst {result.metric}": _rounded(result.min_metric),
                "retrains": result.retrains,
                "promotions": result.promotions,
                "holds": result.holds,
                "rejections": result.rejections,
                "rollbacks": result.rollbacks,
                "compute s": round(result.compute_s, 1),
                "error": result.error or "",
            }
        )
    table = pd.DataFrame(rows)
    if not table["error"].astype(bool).any():
        table = table.drop(columns=["error"])
    return table


def draw_chart(results: list[PolicyResult], plan: ReplayPlan, path: Path, title: str) -> Path:
    """Above, the serving champion's realized metric per batch for each policy; below, a row per policy with
    its retrainings (x), promotions (*) and rollbacks (v) at the batch after which they happened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [result for result in results if not result.error]
    figure, (metric_axis, event_axis) = plt.subplots(
        2, 1, figsize=(11, 5.5 + 0.25 * len(shown)), dpi=100, sharex=True,
        gridspec_kw={"height_ratios": [3, 0.4 + 0.3 * len(shown)]},
    )  # fmt: skip
    positions = np.arange(1, len(plan.batches) + 1)
    styles = ["-", "--", "-.", ":"]
    for row, result in enumerate(shown):
        values = np.array([np.nan if v is None else v for v in result.metric_by_batch], dtype=float)
        mean = "-" if result.mean_metric is None else f"{result.mean_metric:.3f}"
        (line,) = metric_axis.plot(
            positions, values, styles[row % len(styles)], linewidth=1.5, label=f"{result.policy}: mean {mean}"
        )
        for symbol, actions, size in (("x", None, 7), ("*", (ledger.PROMOTE,), 12), ("v", (ledger.ROLLBACK,), 8)):
            at = [e["batch"] for e in result.events if (e["action"] in actions if actions else e["action"] in ledger.TRAINING_ACTIONS)]
            if at:
                event_axis.plot(at, [row] * len(at), symbol, color=line.get_color(), markersize=size)
    event_axis.set_yticks(range(len(shown)), [f"{r.policy} ({r.retrains})" for r in shown], fontsize=8)
    event_axis.set_ylim(len(shown) - 0.5, -0.5)
    event_axis.grid(axis="x", alpha=0.3)
    event_axis.set_xlabel(f"batch ({plan.batch_size} each, from {plan.initial_end:%Y-%m-%d}); x retraining, * promotion, v rollback")
    metric_axis.set_ylabel(f"champion's realized {plan.metric}")
    figure.suptitle(f"replay of {title}: {len(plan.batches)} batches after a first model on {len(plan.initial):,} rows", fontsize=10)
    metric_axis.grid(alpha=0.3)
    metric_axis.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(6, max(1, len(shown))), frameon=False)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
