"""Where every customer stands: mode, champion and its holdout metric, last verdict, promotions, onboarding and
quarantined batches."""

from __future__ import annotations

from retrain_platform import batches, customers, ledger, onboarding
from retrain_platform.registry import CHAMPION, ModelRegistry
from retrain_platform.warehouse import Warehouse

STATUS_KEYS = (
    "customer",
    "mode",
    "champion_version",
    "primary_metric",
    "champion_metric",
    "last_verdict",
    "promotions",
    "onboarding",
    "quarantined_batches",
)
# The table shows quarantined batches as a line under it, naming the command that lists them.
TABLE_KEYS = STATUS_KEYS[:-1]
HOLDOUT_TAG_PREFIX = "holdout_"
HOLDOUT_ESTIMATED_TAG_PREFIX = "holdout_estimated_"


def customer_status(warehouse: Warehouse, registry: ModelRegistry) -> list[dict]:
    history = ledger.history(warehouse)
    states = onboarding.all_statuses(warehouse)
    onboarding_state = dict(zip(states["customer"], states["status"]))
    quarantined = batches.quarantined_counts(warehouse)
    rows = []
    for spec in customers.list_specs(warehouse):
        champion = registry.alias_version(spec.model_name, CHAMPION)
        metric = None if champion is None else holdout_metrics(registry, spec.model_name, champion, spec.primary_metric)[0]
        mine = history[history["customer"] == spec.customer]
        rows.append(
            {
                "customer": spec.customer,
                "mode": spec.mode,
                "champion_version": champion,
                "primary_metric": spec.primary_metric,
                "champion_metric": metric,
                "last_verdict": None if mine.empty else str(mine["verdict"].iloc[-1]),
                "promotions": int(mine["action"].isin(ledger.PROMOTIONS).sum()),
                # Customers set up before `onboard` existed (the demo) have no onboarding record: they are live.
                "onboarding": onboarding_state.get(spec.customer, onboarding.READY),
                "quarantined_batches": quarantined.get(spec.customer, 0),
            }
        )
    return rows


def holdout_metrics(registry: ModelRegistry, model_name: str, version: str, metric: str) -> tuple[float | None, float | None]:
    """What a version scored on its training's holdout, and its label-free estimate there, from one read of
    its tags (None for a version trained before they were kept)."""
    tags = registry.version_tags(model_name, version)
    values = (tags.get(HOLDOUT_TAG_PREFIX + metric), tags.get(HOLDOUT_ESTIMATED_TAG_PREFIX + metric))
    return tuple(float(value) if value is not None else None for value in values)


def format_table(rows: list[dict]) -> str:
    """The status table, and under it a line per customer with quarantined batches."""
    if not rows:
        return "no customers yet: run `retrain-platform demo` or onboard one"
    header = list(TABLE_KEYS)
    cells = [[_cell(row[key]) for key in header] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)
    for row in rows:
        if row["quarantined_batches"]:
            lines.append(
                f"{row['customer']}: {row['quarantined_batches']} quarantined batch(es), left out of training, drift "
                f"and metrics: see `retrain-platform batches {row['customer']}`"
            )
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
