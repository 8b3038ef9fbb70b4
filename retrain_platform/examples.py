"""Datasets that `retrain-platform replay --example NAME` replays offline: one real dataset shipped in the
package, and the demo's synthetic customers."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

import pandas as pd

from retrain_platform import demo_data

SEATTLE_WEATHER = "seattle-weather"
DEFAULT_EXAMPLE = SEATTLE_WEATHER
# `<demo customer>-steady`: that customer with no drift at all, the control for a retraining policy.
STEADY = "-steady"


@dataclass
class Example:
    name: str
    frame: pd.DataFrame
    label: str
    timestamp: str
    id_column: str | None
    batch: str
    initial: str
    description: str
    spec_overrides: dict = field(default_factory=dict)


def example_names() -> list[str]:
    return [SEATTLE_WEATHER, *demo_data.DEMO_CUSTOMER_NAMES, *(name + STEADY for name in demo_data.DEMO_CUSTOMER_NAMES)]


def load_example(name: str = DEFAULT_EXAMPLE) -> Example:
    if name == SEATTLE_WEATHER:
        return seattle_weather()
    if name in demo_data.DEMO_CUSTOMER_NAMES:
        return demo_customer(name)
    if name.removesuffix(STEADY) in demo_data.DEMO_CUSTOMER_NAMES:
        return demo_customer(name.removesuffix(STEADY), drift=False)
    raise ValueError(f"--example: {name!r} is not one of {', '.join(example_names())}")


def seattle_weather() -> Example:
    """Seattle's daily weather 2012-2015 (vega_datasets, MIT; NOAA data): is the day labelled `sun`?

    The label's own coding drifts: from spring 2013 most dry, grey days are `fog` where they were `sun` or
    `rain` before, so a model fitted on 2012 loses its footing. `weather` itself is the label's source and
    is dropped."""
    with resources.files("retrain_platform.data").joinpath("seattle-weather.csv").open() as handle:
        raw = pd.read_csv(handle, parse_dates=["date"])
    frame = raw.drop(columns=["weather"]).assign(sunny=(raw["weather"] == "sun").astype(int))
    return Example(
        name=SEATTLE_WEATHER,
        frame=frame,
        label="sunny",
        timestamp="date",
        id_column=None,
        batch="month",
        initial="1 year",
        description="Seattle daily weather 2012-2015: is the day labelled sunny? first model on 2012, then monthly batches",
    )


def demo_customer(name: str, seed: int = 0, drift: bool = True) -> Example:
    """A demo customer's history and its weekly batches, as one file would hold them (without its drift,
    every batch drawn like the history)."""
    customer = next(c for c in demo_data.demo_customers(seed=seed, drift=drift) if c.customer == name)
    spec = customer.spec
    kept = ("thresholds", "automation", "drift_thresholds", "training_window_days", "min_training_rows", "task",
            "primary_metric", "features", "label_values", "holdout_fraction")  # fmt: skip
    frame = pd.concat([customer.history, *customer.batches], ignore_index=True)
    return Example(
        name=name if drift else name + STEADY,
        frame=frame,
        label=spec["label_column"],
        timestamp=spec["timestamp_column"],
        id_column=spec["id_column"],
        batch=str(len(customer.batches[0])),
        initial=str(len(customer.history)),
        description=f"demo customer {name}: {customer.drift}",
        spec_overrides={key: spec[key] for key in kept if key in spec},
    )
