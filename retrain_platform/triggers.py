"""When to retrain and when to roll back: decisions over evidence the monitoring stage left in the warehouse.

The decisions are pure functions of their evidence and of `now`, which is always an argument: nothing here
reads the wall clock, so the sensors that call these functions can be replayed over a dataset's history at
simulated times. `evidence` reads what they judge from the warehouse and the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from retrain_platform import ledger
from retrain_platform.evaluation import GREATER_IS_BETTER, comparable_value, improvement
from retrain_platform.modelling import holdout_rows

DRIFT = "drift"
PERFORMANCE = "performance"
NEW_LABELS = "new_labels"
SCHEDULE = "schedule"
AUTO_ROLLBACK = "auto_rollback"

TRAINING_ACTIONS, CHAMPION_MOVES = ledger.TRAINING_ACTIONS, ledger.CHAMPION_MOVES


@dataclass(frozen=True)
class Trigger:
    """A reason to act, with the evidence that identifies it: the same evidence gives the same run key."""

    kind: str
    customer: str
    evidence_key: str
    reason: str
    # When the change it saw began: the start of the earliest batch in the run that fired it (not part of the
    # run key: the same evidence is the same trigger however far back it reaches).
    since: datetime | None = None

    @property
    def run_key(self) -> str:
        return f"{self.kind}:{self.customer}:{self.evidence_key}"

    @property
    def text(self) -> str:
        """What the ledger's `trigger` column and the MLflow tags record."""
        return f"{self.kind}: {self.reason}"


# ---------------------------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class BatchDrift:
    """One measured batch, as the drift sensor sees it."""

    batch_id: str
    batch_start: datetime | None
    drift_share: float
    dataset_drifted: bool
    drifted_columns: str
    model_version: str | None


@dataclass(frozen=True)
class BatchMetric:
    """The champion's primary metric on one batch: realized on labelled rows, and the label-free estimate."""

    batch_id: str
    model_version: str
    metric: str
    realized: float | None
    estimated: float | None
    labelled_rows: int
    batch_start: datetime | None = None


@dataclass(frozen=True)
class ShadowComparison:
    """The champion and the previous champion scored on the same labelled rows of one batch."""

    batch_id: str
    labelled_rows: int
    champion_version: str
    champion_value: float
    previous_version: str
    previous_value: float


@dataclass(frozen=True)
class LastTraining:
    recorded_at: datetime
    dagster_run_id: str | None


@dataclass(frozen=True)
class ChampionMove:
    """The latest change of champion the ledger records."""

    action: str
    from_version: str | None
    to_version: str | None
    recorded_at: datetime


# --------------------------------------------------------------------------------------------- decisions


def drift_trigger(
    customer: str,
    latest_first: list[BatchDrift],
    consecutive: int,
    dataset_share: float,
    confirmation: Confirmation | None = None,
) -> Trigger | None:
    """Fire when each of the `consecutive` latest batches (measured by the current champion) drifted and,
    given a `confirmation`, the champion's metric on the latest batch fell from its holdout metric by at
    least the confirmation's share.

    Drift alone is a poor reason to spend a training: seasonal features drift every season against a
    whole-year baseline while the model keeps predicting well. A drop of the realized metric (or of the
    label-free estimate, before labels arrive) says the drift reaches the model."""
    recent = latest_first[:consecutive]
    if len(recent) < consecutive or not all(batch.dataset_drifted for batch in recent):
        return None
    confirmed = ""
    if confirmation is not None:
        if not confirmation.holds():
            return None
        confirmed = f"; confirmed by {confirmation.describe()}"
    ordered = list(reversed(recent))
    version = ordered[-1].model_version
    run = _leading_run(latest_first, lambda batch: batch.dataset_drifted)
    shares = ", ".join(f"{b.batch_id} {b.drift_share:.0%} ({_first_names(b.drifted_columns)})" for b in ordered)
    return Trigger(
        kind=DRIFT,
        customer=customer,
        evidence_key="+".join(b.batch_id for b in ordered) + f"@v{version}",
        reason=(
            f"dataset drift in {consecutive} consecutive batches against champion v{version}: {shares}; "
            f"thresholds: {consecutive} batches, dataset drifts at >= {dataset_share:.0%} of features{confirmed}"
        ),
        since=run[-1].batch_start,
    )


def _leading_run(latest_first: list, belongs) -> list:
    """The newest batches, newest first, up to the first one that does not belong to the run."""
    run = []
    for batch in latest_first:
        if not belongs(batch):
            break
        run.append(batch)
    return run


@dataclass(frozen=True)
class Drop:
    """How far the champion's metric on one batch sits from what it scored on its training's holdout."""

    latest: BatchMetric
    kind: str  # realized | estimated
    value: float
    reference: float
    share: float  # of the reference, positive when the batch is worse


@dataclass(frozen=True)
class Confirmation:
    """The champion's metric on its latest `batches` batches against its training's holdout, like with like:
    a realized metric against the realized holdout metric, a label-free estimate against the estimate on the
    holdout (an estimate may sit well away from the realized value when probabilities are not calibrated)."""

    recent: list[BatchMetric]  # newest first
    holdout: float | None
    holdout_estimated: float | None
    min_drop: float
    min_labelled_rows: int
    batches: int = 1

    @property
    def latest(self) -> BatchMetric | None:
        return self.recent[0] if self.recent else None

    def drops(self) -> list[Drop]:
        found = []
        for latest in self.recent[: self.batches]:
            drop = self.drop_of(latest)
            if drop is None:
                break
            found.append(drop)
        return found

    def drop_of(self, batch: BatchMetric) -> Drop | None:
        """How far `batch` fell from the holdout, like with like (None when it cannot be told)."""
        value = batch_value(batch, self.min_labelled_rows)
        if value is None:
            return None
        reference = self.holdout if value[1] == "realized" else self.holdout_estimated
        if reference is None or not math.isfinite(reference):
            return None
        return Drop(batch, value[1], value[0], reference, relative_drop(batch.metric, reference, value[0]))

    def holds(self) -> bool:
        """Every one of the latest `batches` batches fell at least `min_drop` below the holdout."""
        drops = self.drops()
        return len(drops) == self.batches and all(drop.share >= self.min_drop for drop in drops)

    def describe(self) -> str:
        parts = []
        for drop in self.drops():
            direction = "below" if GREATER_IS_BETTER[drop.latest.metric] else "above"
            holdout = "holdout" if drop.kind == "realized" else "holdout estimate"
            parts.append(
                f"{drop.kind} {drop.latest.metric} {drop.value:.4f} on batch {drop.latest.batch_id}, {abs(drop.share):.1%} "
                f"{direction} the champion's {holdout} {drop.reference:.4f}"
            )
        return "; ".join(parts) + f" (at least {self.min_drop:.1%})"


def batch_value(latest: BatchMetric | None, min_labelled_rows: int) -> tuple[float, str] | None:
    """The realized metric when enough labels arrived, else the label-free estimate, with which it is."""
    if latest is None:
        return None
    if latest.realized is not None and latest.labelled_rows >= min_labelled_rows and math.isfinite(latest.realized):
        return latest.realized, "realized"
    if latest.estimated is not None and math.isfinite(latest.estimated):
        return latest.estimated, "estimated"
    return None


def relative_drop(metric: str, reference: float, value: float) -> float:
    """How much worse `value` is than `reference`, as a share of the reference (negative when better)."""
    scale = abs(comparable_value(metric, reference)) or 1.0
    return float(improvement(metric, reference, value)) / scale


def is_below_floor(metric: str, value: float, floor: float) -> bool:
    """Worse than the floor: below it, or above it for error metrics (the floor is then a ceiling)."""
    compared = comparable_value(metric, value)
    if GREATER_IS_BETTER[metric]:
        return compared < floor
    return compared > floor


def performance_trigger(
    customer: str,
    latest: BatchMetric | None,
    floor: float | None,
    min_labelled_rows: int,
    confirmation: Confirmation | None = None,
) -> Trigger | None:
    """Fire when the champion's realized primary metric on the latest batch (its label-free estimate when too
    few labels have arrived) is worse than the customer's floor, or, given a `confirmation`, when each of
    its latest batches fell at least the confirmation's share below the champion's own holdout metric.

    The floor is a line the user drew, so one batch across it is enough; a fall from the holdout metric is
    relative evidence that one noisy batch can fake, so it must last `confirmation.batches` batches.

    The trigger's `since` is the start of the run of the champion's latest batches that are each under the
    floor or fell by the confirmation's share (`confirmation.recent` may reach further back than its
    `batches`): where the change that the training must learn began."""
    found = batch_value(latest, min_labelled_rows)
    reasons = []
    below = _below_floor(latest, floor, min_labelled_rows, confirmation)
    if below is not None:
        reasons.append(below)
    if confirmation is not None and confirmation.holds():
        reasons.append(f"champion v{confirmation.latest.model_version}: {confirmation.describe()}")
    if not reasons:
        return None
    kind = found[1] if found is not None else confirmation.drops()[0].kind

    def fell(batch: BatchMetric) -> bool:
        if _below_floor(batch, floor, min_labelled_rows, confirmation) is not None:
            return True
        drop = confirmation.drop_of(batch) if confirmation is not None else None
        return drop is not None and drop.share >= confirmation.min_drop

    earlier = confirmation.recent if confirmation is not None and confirmation.recent[:1] == [latest] else [latest]
    run = _leading_run(earlier, fell) or [latest]
    return Trigger(
        kind=PERFORMANCE,
        customer=customer,
        evidence_key=f"{latest.batch_id}@v{latest.model_version}:{kind}",
        reason="; ".join(reasons) + f"; realized needs >= {min_labelled_rows:,} labelled rows",
        since=run[-1].batch_start,
    )


def _below_floor(
    batch: BatchMetric | None, floor: float | None, min_labelled_rows: int, confirmation: Confirmation | None
) -> str | None:
    """Why `batch` is worse than the floor, or None when it is not (or cannot be told)."""
    found = batch_value(batch, min_labelled_rows)
    if found is None or floor is None:
        return None
    value, corrected = found[0], ""
    gap = _estimate_gap(confirmation) if found[1] == "estimated" else None
    if gap is not None:
        # The floor is in realized units; an estimate is moved by the gap it showed on the holdout.
        value = found[0] + gap
        corrected = f" ({value:.4f} corrected by the estimate's gap on the holdout, {gap:+.4f})"
    if not is_below_floor(batch.metric, value, floor):
        return None
    relation = "below the floor" if GREATER_IS_BETTER[batch.metric] else "above the ceiling"
    return (
        f"{found[1]} {batch.metric} {found[0]:.4f}{corrected} of champion v{batch.model_version} on batch "
        f"{batch.batch_id} ({batch.labelled_rows:,} labelled rows) is {relation} {floor:g}"
    )


def rows_to_learn(window_rows: int, since_change: int, holdout_fraction: float) -> tuple[int, int]:
    """Of the `since_change` labelled rows that arrived since a change began, how many a training now would
    learn from, and how many rows it would hold out: its holdout is the latest `holdout_fraction` of the
    `window_rows` in its window, so the change's rows fill the holdout first.

    A challenger whose training part holds none of them learns the world before the change and is judged on
    the world after it: the gate holds it, and the training was spent for nothing."""
    held_out = holdout_rows(window_rows, holdout_fraction) if window_rows > 1 else window_rows
    return max(0, since_change - held_out), held_out


def _estimate_gap(confirmation: Confirmation | None) -> float | None:
    """Realized minus estimated metric on the champion's holdout: how far off its label-free estimate runs."""
    if confirmation is None or confirmation.holdout is None or confirmation.holdout_estimated is None:
        return None
    return confirmation.holdout - confirmation.holdout_estimated


def new_labels_trigger(
    customer: str,
    new_rows: int,
    threshold: int,
    last_training: LastTraining | None,
    snapshot_rows: int = 0,
    share: float = 0.0,
) -> Trigger | None:
    """Fire when a training would add at least `threshold` labelled rows to the last training's snapshot,
    and at least `share` times the rows that snapshot holds.

    New labels alone are no evidence that the model went stale: on stable data a model trained on twice the
    rows is rarely better, while drift and a falling metric have triggers of their own. The share keeps this
    trigger for when a training would learn from substantially more data than the champion saw.
    A customer never trained is left to its onboarding: the first training is not this trigger's call."""
    required = max(threshold, math.ceil(share * snapshot_rows))
    if last_training is None or new_rows < required:
        return None
    since = last_training.dagster_run_id or last_training.recorded_at.isoformat()
    relative = f" and {share:g} x the {snapshot_rows:,} rows it trained on" if required > threshold else ""
    return Trigger(
        kind=NEW_LABELS,
        customer=customer,
        evidence_key=f"since-{since}",
        reason=(
            f"{new_rows:,} new labelled rows since the training of {last_training.recorded_at:%Y-%m-%d %H:%M} "
            f"(run {since[:8]}); threshold {threshold:,}{relative}"
        ),
    )


def cooldown_ends(last_training: LastTraining | None, cooldown_hours: float) -> datetime | None:
    if last_training is None:
        return None
    return last_training.recorded_at + timedelta(hours=cooldown_hours)


def in_cooldown(last_training: LastTraining | None, now: datetime, cooldown_hours: float) -> bool:
    """True while less than `cooldown_hours` have passed since the last training."""
    ends = cooldown_ends(last_training, cooldown_hours)
    return ends is not None and now < ends


def rollback_trigger(
    customer: str,
    metric: str,
    move: ChampionMove | None,
    champion_version: str | None,
    comparisons: list[ShadowComparison],
    batches_needed: int,
    min_labelled_rows: int,
    tolerance: float,
) -> Trigger | None:
    """Fire when the champion that the latest promotion (or approval) put in place does worse than the one it
    replaced, by more than `tolerance`, over its first labelled batches: at least `batches_needed` of them,
    and as many more as it takes to hold `min_labelled_rows` labelled rows between them (small batches are
    judged together rather than never).

    Only the first batches after the promotion are judged, so the decision is made once; a rollback is not
    itself judged (that would flip the champion back and forth)."""
    if move is None or move.action not in ledger.PROMOTIONS or move.from_version is None:
        return None
    if champion_version is None or move.to_version != champion_version:
        return None
    usable = []
    for c in comparisons:
        if (
            c.champion_version == champion_version
            and c.previous_version == move.from_version
            and c.labelled_rows > 0
            and math.isfinite(c.champion_value)
            and math.isfinite(c.previous_value)
        ):
            usable.append(c)
            if len(usable) >= batches_needed and sum(u.labelled_rows for u in usable) >= min_labelled_rows:
                break
    if len(usable) < batches_needed or sum(u.labelled_rows for u in usable) < min_labelled_rows:
        return None
    weights = [c.labelled_rows for c in usable]
    champion_mean = sum(w * c.champion_value for w, c in zip(weights, usable)) / sum(weights)
    previous_mean = sum(w * c.previous_value for w, c in zip(weights, usable)) / sum(weights)
    shortfall = -float(improvement(metric, champion_mean, previous_mean))
    if shortfall <= tolerance:
        return None
    batches = "+".join(c.batch_id for c in usable)
    return Trigger(
        kind=AUTO_ROLLBACK,
        customer=customer,
        evidence_key=f"v{champion_version}-vs-v{move.from_version}:{batches}",
        reason=(
            f"champion v{champion_version} realized {metric} {champion_mean:.4f} vs {previous_mean:.4f} for the "
            f"previous champion v{move.from_version} on {batches.replace('+', ', ')} "
            f"({sum(weights):,} labelled rows): worse by {shortfall:.4f} > tolerance {tolerance:g}"
        ),
    )


def _first_names(columns: str, shown: int = 3) -> str:
    """A batch's drifted columns for one line of evidence: the first few and how many more."""
    names = [name for name in columns.split(", ") if name]
    if not names:
        return "-"
    return ", ".join(names[:shown]) + (f" +{len(names) - shown} more" if len(names) > shown else "")
