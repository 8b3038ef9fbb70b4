"""The demo: the five demo customers replayed together in one home, week by week, through the platform's
own sensors, the way `replay` walks one dataset (rows first, labels later, sensors ticking at each week's
end). The user then opens the same home in the UI."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pandas as pd

from retrain_platform import deployment
from retrain_platform.defs.resources import Clock
from retrain_platform.demo_data import HISTORY_END, DemoCustomer, batch_window, demo_customers
from retrain_platform.ledger import LedgerEntry
from retrain_platform.replay import ReplayBatch, arrive
from retrain_platform.runner import SHIPPED_SENSORS, BatchOutcome, Firing, RunOutcome, Runner
from retrain_platform.spec import APPROVE_MODE, CustomerSpec, complete_spec, parse_spec

DEMO_TRIGGER = "demo"
FIRST_TRAINING = f"{DEMO_TRIGGER}: first training"
# Approve mode needs a person: in the demo one reviews what waits at the start of every week from the second.
REVIEWER = "demo: weekly review"
# Every sensor as shipped, as replay's `default` policy ticks them (the weekly schedule aside: the demo is six weeks).
DEMO_SENSORS = SHIPPED_SENSORS


@dataclass
class DemoCustomerSetup:
    customer: DemoCustomer
    spec: CustomerSpec
    training: RunOutcome | None = None


@dataclass
class DemoWeek:
    number: int
    ends: pd.Timestamp
    arrived: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    approved: list[LedgerEntry] = field(default_factory=list)
    batches: list[BatchOutcome] = field(default_factory=list)
    firings: list[Firing] = field(default_factory=list)


def load_customers(runner: Runner, seed: int = 0) -> list[DemoCustomerSetup]:
    """Each demo customer's spec, landing table and partition, from its labelled history."""
    setups = []
    for customer in demo_customers(seed=seed):
        spec = complete_spec(parse_spec(customer.spec), customer.history)
        runner.add_customer(spec, customer.history)
        setups.append(DemoCustomerSetup(customer, spec))
    return setups


def train_first_models(runner: Runner, setups: list[DemoCustomerSetup]) -> None:
    clock = Clock(frozen_at=HISTORY_END.isoformat())
    for setup in setups:
        setup.training = runner.train(setup.spec.customer, trigger=FIRST_TRAINING, clock=clock)


def replay_weeks(runner: Runner, setups: list[DemoCustomerSetup], weeks: int) -> Iterator[DemoWeek]:
    """The weeks after the history, one at a time: from the second week a reviewer first approves what
    waits for approval; customers with a champion receive their batch; those without one wait."""
    cursors: dict[str, str | None] = {}
    for index in range(min(weeks, len(setups[0].customer.batches))):
        start, end = batch_window(index)
        week = DemoWeek(index + 1, end)
        if index > 0:
            week.approved = review_approvals(runner, [setup.spec for setup in setups], start)
        arrivals = []
        for setup in setups:
            if setup.training is None or not setup.training.success:
                continue
            if runner.champion(setup.spec) is None:
                week.waiting.append(setup.spec.customer)
                continue
            batch = ReplayBatch(f"week-{index + 1}", start, end, setup.customer.batches[index])
            arrivals.append((setup.spec, batch))
            week.arrived.append(setup.spec.customer)
        step = arrive(runner, arrivals, DEMO_SENSORS, cursors, Clock(frozen_at=end.isoformat()))
        week.batches, week.firings = step.batches, step.firings
        yield week


def review_approvals(runner: Runner, specs: list[CustomerSpec], now: pd.Timestamp) -> list[LedgerEntry]:
    """Approve, as a person would, the latest version of each approve-mode customer awaiting approval."""
    approved = []
    for spec in specs:
        if spec.mode == APPROVE_MODE and deployment.pending_versions(runner.registry, spec):
            approved.append(
                deployment.approve(runner.warehouse, runner.registry, spec, now=now.to_pydatetime(), approved_by=REVIEWER)
            )
    return approved
