"""Synthetic customers for the demo and the benchmarks.

Each demo customer has a realistic business dataset, a spec, a labelled history (the first training
run) and weekly batches in which one kind of drift is injected from a known batch onward: covariate
shift, concept drift, a new category, a label-rate change, and a categorical covariate shift on a
regression task. Labels come from known generating functions with noise, so a model can learn them
but not perfectly. Everything is reproducible from a seed: every frame draws from its own random
stream derived from `(seed, customer, segment)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HISTORY_END = pd.Timestamp("2026-10-01")  # exclusive: history ends on 2026-09-30
HISTORY_DAYS = 120
BATCH_DAYS = 7
# Every generated timestamp is before this instant, whatever the number of batches.
TIMESTAMP_LIMIT = pd.Timestamp("2026-11-20")
MAX_BATCHES = int((TIMESTAMP_LIMIT - HISTORY_END) / pd.Timedelta(days=BATCH_DAYS))

DEFAULT_HISTORY_ROWS = 5_000
DEFAULT_BATCH_ROWS = 1_000
DEFAULT_BATCHES = 6

_GenerateFn = Callable[[np.random.Generator, int, bool], dict[str, np.ndarray]]


@dataclass
class DemoCustomer:
    """One demo customer: its spec, labelled history and later weekly batches.

    `batches` are time-ordered and keep their labels; drop the label column to simulate labels that
    arrive late. `drift` says in one line what is injected; `drift_kind` is a short tag
    (covariate_shift, concept_drift, new_category, label_shift, ...) and `drift_from` the index in
    `batches` of the first drifted batch (batches before it are drawn like the history).
    """

    spec: dict
    history: pd.DataFrame
    batches: list[pd.DataFrame]
    drift: str
    drift_kind: str = "none"
    drift_from: int | None = None

    @property
    def customer(self) -> str:
        return self.spec["customer"]

    @property
    def label_column(self) -> str:
        return self.spec["label_column"]


@dataclass(frozen=True)
class _Blueprint:
    """How to generate one customer: columns, the generating function and the injected drift."""

    customer: str
    id_column: str
    id_prefix: str | None  # None: integer ids
    timestamp_column: str
    label_column: str
    features: tuple[tuple[str, str], ...]
    generate: _GenerateFn
    drift_kind: str
    drift_from: int
    drift: str
    spec_options: dict = field(default_factory=dict)
    hour_feature: str | None = None  # a feature that must match the timestamp's hour

    @property
    def landing_table(self) -> str:
        return "landing_" + self.customer.replace("-", "_")

    def spec(self) -> dict:
        return {
            "customer": self.customer,
            "landing_table": self.landing_table,
            "timestamp_column": self.timestamp_column,
            "label_column": self.label_column,
            "id_column": self.id_column,
            "features": [{"name": name, "kind": kind} for name, kind in self.features],
            **self.spec_options,
        }


# ---------------------------------------------------------------------------------------------------
# Small vectorised building blocks


def _long_tail(n: int, exponent: float = 1.1) -> np.ndarray:
    """Zipf-like probabilities: a few frequent values and a long tail of rare ones."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _choice(rng: np.random.Generator, values: Sequence[str], p: Sequence[float], n: int) -> np.ndarray:
    """`n` categorical values drawn with probabilities `p` (normalised), as an object array."""
    p = np.asarray(p, dtype=float)
    return rng.choice(np.asarray(values, dtype=object), size=n, p=p / p.sum())


def _choice_by_group(
    rng: np.random.Generator, values: Sequence[str], p_by_group: np.ndarray, group: np.ndarray
) -> np.ndarray:
    """Draw one value per row from the distribution of its group (row `g` of `p_by_group`)."""
    p = np.asarray(p_by_group, dtype=float)
    cumulative = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = rng.random(len(group))
    index = (u[:, None] > cumulative[group]).sum(axis=1)
    return np.asarray(values, dtype=object)[np.minimum(index, len(values) - 1)]


def _effect(values: np.ndarray, effects: dict[str, float]) -> np.ndarray:
    """Per-row additive effect of a categorical value; values not listed contribute 0."""
    out = np.zeros(len(values))
    for value, effect in effects.items():
        out[values == value] = effect
    return out


def _with_missing(rng: np.random.Generator, values: np.ndarray, rate: float) -> np.ndarray:
    """Blank out a random `rate` of the values; the label was computed from the full values."""
    values = values.astype(float)
    values[rng.random(len(values)) < rate] = np.nan
    return values


def _bernoulli(rng: np.random.Generator, logit: np.ndarray) -> np.ndarray:
    """0/1 labels drawn with probability sigmoid(logit): the label noise of the classifiers."""
    return (rng.random(len(logit)) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


def _timestamps(rng: np.random.Generator, n: int, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Sorted, second-resolution timestamps uniformly spread over [start, end)."""
    span = int((end - start) / pd.Timedelta(seconds=1))
    offsets = np.sort(rng.integers(0, span, size=n))
    return np.datetime64(start, "s") + offsets.astype("timedelta64[s]")


def _at_hour(
    rng: np.random.Generator, timestamps: np.ndarray, hour: np.ndarray, start: pd.Timestamp, end: pd.Timestamp
) -> np.ndarray:
    """Move each timestamp to a random second of `hour` on its day, staying within [start, end)."""
    day = timestamps.astype("datetime64[D]").astype("datetime64[s]")
    seconds = hour.astype(np.int64) * 3600 + rng.integers(0, 3600, size=len(hour))
    moved = day + seconds.astype("timedelta64[s]")
    return np.clip(moved, np.datetime64(start, "s"), np.datetime64(end, "s") - np.timedelta64(1, "s"))


def _ids(first_id: int, n: int, prefix: str | None) -> np.ndarray:
    """Consecutive integer ids, or zero-padded strings such as `sub-0000042` when a prefix is given."""
    numbers = np.arange(first_id, first_id + n, dtype=np.int64)
    if prefix is None:
        return numbers
    if n == 0:  # np.char.zfill cannot size an empty array
        return np.empty(0, dtype=object)
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), 7)).astype(object)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """An independent random stream per (seed, customer, segment), so frames don't depend on each other."""
    return np.random.default_rng([seed, *stream])


# ---------------------------------------------------------------------------------------------------
# The customers' generating functions: (rng, rows, drifted) -> feature and label columns

COUNTRIES = (
    "US", "GB", "DE", "FR", "CA", "BR", "MX", "ES", "IT", "NL", "AU", "PL", "SE", "IN", "JP",
    "AR", "CO", "PT", "BE", "IE", "NO", "DK", "FI", "NZ", "CL",
)  # fmt: skip
US_STATES = (
    "CA", "TX", "FL", "NY", "PA", "IL", "OH", "GA", "NC", "MI", "NJ", "VA", "WA", "AZ", "MA",
    "TN", "IN", "MO", "MD", "WI", "CO", "MN", "SC", "AL", "LA", "KY", "OR", "OK", "CT", "UT",
)  # fmt: skip

STREAMING_PLANS = ("basic", "standard", "premium", "family", "student")
STREAMING_PLAN_FEES = np.array([9.99, 15.49, 22.99, 24.99, 5.99])
# About 1.5 standard deviations of the history's monthly_fee.
STREAMING_PRICE_INCREASE = 10.0


def _streaming_churn(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    plan_index = rng.choice(len(STREAMING_PLANS), size=n, p=[0.36, 0.30, 0.14, 0.12, 0.08])
    plan = np.asarray(STREAMING_PLANS, dtype=object)[plan_index]
    monthly_fee = STREAMING_PLAN_FEES[plan_index] + rng.normal(0.0, 2.5, n)  # add-ons, taxes, promos
    if drifted:
        monthly_fee = monthly_fee + STREAMING_PRICE_INCREASE
    monthly_fee = np.round(np.maximum(monthly_fee, 0.99), 2)
    tenure_months = rng.gamma(1.1, 14.0, n).astype(np.int64) + 1
    weekly_watch_hours = np.round(rng.lognormal(np.log(6.0), 0.85, n), 1)
    support_tickets_90d = rng.poisson(0.5, n)
    failed_payments_90d = rng.poisson(0.15, n)
    payment_method = _choice(
        rng,
        ("card", "paypal", "apple_pay", "google_pay", "carrier_billing", "gift_card", "bank_transfer", "voucher"),
        (0.46, 0.2, 0.12, 0.08, 0.05, 0.04, 0.03, 0.02),
        n,
    )
    device = _choice(
        rng,
        ("smart_tv", "mobile", "web", "streaming_stick", "tablet", "console"),
        (0.34, 0.28, 0.16, 0.1, 0.08, 0.04),
        n,
    )
    country = _choice(rng, COUNTRIES, _long_tail(len(COUNTRIES)), n)

    logit = (
        1.8
        + 0.1 * (monthly_fee - 15.0)
        - 0.9 * np.log1p(tenure_months)
        - 1.0 * np.log1p(weekly_watch_hours)
        + 0.6 * support_tickets_90d
        + 1.2 * failed_payments_90d
        + _effect(plan, {"student": 0.6, "family": -0.5, "premium": -0.3})
        + _effect(payment_method, {"gift_card": 1.0, "voucher": 1.1, "carrier_billing": 0.5})
        + _effect(device, {"mobile": 0.3, "smart_tv": -0.3})
    )
    return {
        "plan": plan,
        "monthly_fee": monthly_fee,
        "tenure_months": tenure_months,
        "weekly_watch_hours": _with_missing(rng, weekly_watch_hours, 0.04),
        "support_tickets_90d": support_tickets_90d,
        "failed_payments_90d": failed_payments_90d,
        "payment_method": payment_method,
        "device": device,
        "country": country,
        "churned": _bernoulli(rng, logit),
    }


LOAN_PURPOSES = (
    "debt_consolidation", "credit_card", "home_improvement", "car", "medical", "small_business",
    "major_purchase", "moving", "wedding", "vacation", "education", "renewable_energy", "other",
)  # fmt: skip


def _lending_default(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    credit_score = np.round(np.clip(rng.normal(690.0, 65.0, n), 300, 850)).astype(np.int64)
    log_income = rng.normal(np.log(62_000), 0.5, n)
    annual_income = np.round(np.exp(log_income), -2)
    log_amount = np.log(14_000) + 0.4 * (log_income - np.log(62_000)) + rng.normal(0.0, 0.6, n)
    loan_amount = np.round(np.clip(np.exp(log_amount), 1_000, 40_000), -1)
    debt_to_income = np.round(np.clip(rng.beta(2.2, 7.0, n) * 0.9, 0.0, 0.75), 3)
    employment_years = np.minimum(np.floor(rng.gamma(1.4, 4.5, n)), 40)
    loan_purpose = _choice(rng, LOAN_PURPOSES, _long_tail(len(LOAN_PURPOSES), 1.3), n)
    home_ownership = _choice(rng, ("mortgage", "rent", "own", "other"), (0.45, 0.4, 0.13, 0.02), n)
    rate_type = _choice(rng, ("fixed", "variable"), (0.72, 0.28), n)
    state = _choice(rng, US_STATES, _long_tail(len(US_STATES), 0.9), n)

    z_credit = (credit_score - 690.0) / 65.0
    z_dti = (debt_to_income - 0.22) / 0.12
    z_burden = (np.log(loan_amount) - log_income - np.log(14_000 / 62_000)) / 0.6
    z_employment = (np.log1p(employment_years) - 1.6) / 0.8
    variable = (rate_type == "variable").astype(float)
    if drifted:
        # A rate rise: repayment burden and variable-rate loans now drive defaults; the credit score
        # and employment history, which used to matter most, lose most of their signal.
        logit = -2.6 - 0.4 * z_credit + 1.2 * z_dti + 0.7 * z_burden + 1.5 * variable
    else:
        logit = (
            -2.2
            - 1.5 * z_credit
            + 0.25 * z_dti
            + 0.1 * z_burden
            - 0.7 * z_employment
            - 0.4 * variable
            + _effect(loan_purpose, {"small_business": 0.7, "medical": 0.4, "credit_card": -0.2})
            + _effect(home_ownership, {"rent": 0.25, "own": -0.2})
        )
    return {
        "credit_score": credit_score,
        "annual_income": _with_missing(rng, annual_income, 0.03),
        "loan_amount": loan_amount,
        "debt_to_income": debt_to_income,
        "employment_years": _with_missing(rng, employment_years, 0.05),
        "loan_purpose": loan_purpose,
        "home_ownership": home_ownership,
        "rate_type": rate_type,
        "state": state,
        "defaulted": _bernoulli(rng, logit),
    }


RETAIL_PAYMENT_METHODS = (
    "credit_card", "debit_card", "paypal", "apple_pay", "google_pay", "gift_card", "store_credit",
    "cash_on_delivery", "crypto",
)  # fmt: skip
RETAIL_NEW_PAYMENT_METHOD = "bnpl"
RETAIL_NEW_PAYMENT_SHARE = 0.25
RETAIL_REGIONS = tuple(f"region_{i:02d}" for i in range(1, 23))


def _retail_fraud(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    basket_value = np.round(rng.lognormal(np.log(45.0), 0.8, n), 2)
    items_count = 1 + rng.poisson(2.3, n)
    account_age_days = np.floor(rng.gamma(0.8, 420.0, n))
    hour_of_day = np.mod(rng.normal(14.5, 5.0, n), 24).astype(np.int64)
    cards_used_30d = 1 + rng.poisson(0.25, n)
    address_mismatch = (rng.random(n) < 0.12).astype(np.int64)
    payment_method = _choice(
        rng, RETAIL_PAYMENT_METHODS, (0.36, 0.25, 0.15, 0.09, 0.06, 0.04, 0.025, 0.015, 0.01), n
    )
    if drifted:
        # The shop launches buy-now-pay-later; a quarter of the orders use it.
        payment_method[rng.random(n) < RETAIL_NEW_PAYMENT_SHARE] = RETAIL_NEW_PAYMENT_METHOD
    device_type = _choice(rng, ("mobile_app", "desktop", "mobile_web", "kiosk"), (0.45, 0.27, 0.25, 0.03), n)
    store_region = _choice(rng, RETAIL_REGIONS, _long_tail(len(RETAIL_REGIONS)), n)

    night = (hour_of_day < 5) | (hour_of_day >= 23)
    logit = (
        -1.6
        + 1.0 * np.log(basket_value / 45.0)
        - 0.7 * np.log1p(account_age_days / 30.0)
        + 1.0 * (cards_used_30d - 1)
        + 1.5 * address_mismatch
        + 1.2 * night
        + 0.15 * (items_count > 6)
        + _effect(
            payment_method,
            {"gift_card": 1.1, "crypto": 1.6, "paypal": -0.3, "apple_pay": -0.5, RETAIL_NEW_PAYMENT_METHOD: 1.2},
        )
        + _effect(device_type, {"mobile_web": 0.4, "kiosk": -0.8})
    )
    return {
        "basket_value": basket_value,
        "items_count": items_count,
        "account_age_days": _with_missing(rng, account_age_days, 0.04),  # guest checkouts
        "hour_of_day": hour_of_day,
        "cards_used_30d": cards_used_30d,
        "address_mismatch": address_mismatch,
        "payment_method": payment_method,
        "device_type": device_type,
        "store_region": store_region,
        "is_fraud": _bernoulli(rng, logit),
    }


SUPPORT_PRIORITIES = ("low", "medium", "high")
SUPPORT_PRIORS = np.array([0.58, 0.30, 0.12])
# A platform incident season: many more urgent tickets, each class looking as before.
SUPPORT_PRIORS_DRIFTED = np.array([0.34, 0.30, 0.36])
SUPPORT_TIERS = ("free", "pro", "business", "enterprise")
SUPPORT_AREAS = (
    "billing", "login", "integrations", "reporting", "api", "mobile_app", "notifications", "exports",
    "permissions", "data_import", "search", "sso", "webhooks", "localization", "audit_log", "calendar_sync",
)  # fmt: skip
SUPPORT_CHANNELS = ("email", "chat", "web_form", "phone", "social")


def _support_priority(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    # Prior shift: the class is drawn first and the features given the class never change.
    priority_index = rng.choice(3, size=n, p=SUPPORT_PRIORS_DRIFTED if drifted else SUPPORT_PRIORS)
    c = priority_index.astype(float)
    affected_users = np.exp(rng.normal(0.3 + 0.9 * c, 1.0, n)).astype(np.int64)
    message_length = rng.lognormal(np.log(320.0) + 0.15 * c, 0.6, n).astype(np.int64)
    account_mrr = np.round(rng.lognormal(np.log(300.0) + 0.4 * c, 1.1, n), 2)
    sentiment_score = np.round(np.clip(rng.normal(0.1 - 0.3 * c, 0.4, n), -1.0, 1.0), 3)
    open_tickets = rng.poisson(0.8 + 0.5 * c)
    customer_tier = _choice_by_group(
        rng,
        SUPPORT_TIERS,
        np.array([[0.45, 0.35, 0.15, 0.05], [0.3, 0.35, 0.23, 0.12], [0.15, 0.3, 0.3, 0.25]]),
        priority_index,
    )
    area_base = _long_tail(len(SUPPORT_AREAS), 1.1)
    urgent_areas = np.isin(SUPPORT_AREAS, ("login", "api", "sso", "webhooks", "integrations"))
    area_p = np.vstack([area_base * np.where(urgent_areas, boost, 1.0) for boost in (0.6, 1.0, 2.5)])
    product_area = _choice_by_group(rng, SUPPORT_AREAS, area_p, priority_index)
    channel = _choice_by_group(
        rng,
        SUPPORT_CHANNELS,
        np.array([[0.45, 0.25, 0.22, 0.03, 0.05], [0.35, 0.33, 0.17, 0.1, 0.05], [0.22, 0.33, 0.1, 0.3, 0.05]]),
        priority_index,
    )
    return {
        "affected_users": affected_users,
        "message_length": message_length,
        "account_mrr": _with_missing(rng, account_mrr, 0.04),
        "sentiment_score": sentiment_score,
        "open_tickets": open_tickets,
        "customer_tier": customer_tier,
        "product_area": product_area,
        "channel": channel,
        "priority": np.asarray(SUPPORT_PRIORITIES, dtype=object)[priority_index],
    }


DELIVERY_WEATHER = ("clear", "cloudy", "rain", "fog", "snow", "storm")
DELIVERY_WEATHER_P = (0.5, 0.26, 0.18, 0.03, 0.02, 0.01)
# Winter arrives: snow and storms become common.
DELIVERY_WEATHER_P_DRIFTED = (0.28, 0.2, 0.2, 0.03, 0.24, 0.05)
DELIVERY_WEATHER_SLOWDOWN = {"rain": 1.25, "fog": 1.2, "snow": 1.8, "storm": 2.0}
DELIVERY_WEATHER_DELAY = {"rain": 2.0, "snow": 8.0, "storm": 10.0}
DELIVERY_VEHICLES = ("bike", "scooter", "e_bike", "car", "walking")
DELIVERY_MINUTES_PER_KM = {"bike": 3.6, "scooter": 2.6, "e_bike": 2.9, "car": 3.0, "walking": 11.0}
DELIVERY_ZONES = (
    "downtown", "riverside", "old_town", "university", "harbor", "midtown", "west_end", "north_hills",
    "east_village", "airport", "lakeside", "industrial", "south_park", "greenfield", "market_district",
    "stadium", "tech_park", "canal_side", "hillcrest", "meadowbrook", "pine_grove", "bay_view",
)  # fmt: skip
DELIVERY_SLOW_ZONES = {"downtown": 4.0, "old_town": 3.0, "airport": 5.0, "industrial": 2.0, "hillcrest": 3.5}


def _delivery_time(rng: np.random.Generator, n: int, drifted: bool) -> dict[str, np.ndarray]:
    distance_km = np.round(np.clip(rng.gamma(2.0, 1.6, n), 0.2, 25.0), 2)
    items_count = 1 + rng.poisson(2.2, n)
    meal = rng.choice(3, size=n, p=[0.4, 0.45, 0.15])
    order_hour = np.where(
        meal == 0, rng.normal(12.5, 1.2, n), np.where(meal == 1, rng.normal(19.0, 1.5, n), rng.uniform(8, 23, n))
    )
    order_hour = np.clip(np.floor(order_hour), 0, 23).astype(np.int64)
    prep_minutes = np.round(rng.gamma(4.0, 3.0, n), 1)
    courier_active_orders = rng.poisson(1.1, n)
    weather = _choice(rng, DELIVERY_WEATHER, DELIVERY_WEATHER_P_DRIFTED if drifted else DELIVERY_WEATHER_P, n)
    vehicle = _choice(rng, DELIVERY_VEHICLES, (0.34, 0.25, 0.2, 0.18, 0.03), n)
    zone = _choice(rng, DELIVERY_ZONES, _long_tail(len(DELIVERY_ZONES), 0.8), n)

    slowdown = 1.0 + _effect(weather, {k: v - 1.0 for k, v in DELIVERY_WEATHER_SLOWDOWN.items()})
    rush = ((order_hour >= 11) & (order_hour <= 13)) | ((order_hour >= 18) & (order_hour <= 20))
    minutes = (
        6.0
        + prep_minutes
        + distance_km * _effect(vehicle, DELIVERY_MINUTES_PER_KM) * slowdown
        + 0.6 * items_count
        + 3.0 * courier_active_orders
        + 4.0 * rush
        + _effect(zone, DELIVERY_SLOW_ZONES)
        + _effect(weather, DELIVERY_WEATHER_DELAY)
        + rng.gamma(2.0, 3.0, n)  # right-skewed: traffic, parking, finding the door
        + rng.normal(0.0, 5.0, n)
    )
    return {
        "distance_km": distance_km,
        "items_count": items_count,
        "order_hour": order_hour,
        "prep_minutes": _with_missing(rng, prep_minutes, 0.03),
        "courier_active_orders": courier_active_orders,
        "weather": weather,
        "vehicle": vehicle,
        "zone": zone,
        "delivery_minutes": np.round(np.maximum(minutes, 8.0), 1),
    }


_BLUEPRINTS: tuple[_Blueprint, ...] = (
    _Blueprint(
        customer="lumen-streaming",
        id_column="subscriber_id",
        id_prefix="sub-",
        timestamp_column="snapshot_at",
        label_column="churned",
        features=(
            ("plan", "categorical"),
            ("monthly_fee", "numeric"),
            ("tenure_months", "numeric"),
            ("weekly_watch_hours", "numeric"),
            ("support_tickets_90d", "numeric"),
            ("failed_payments_90d", "numeric"),
            ("payment_method", "categorical"),
            ("device", "categorical"),
            ("country", "categorical"),
        ),
        generate=_streaming_churn,
        drift_kind="covariate_shift",
        drift_from=2,
        drift=(
            f"covariate shift: monthly_fee +{STREAMING_PRICE_INCREASE:g} (~1.5 std, a price increase) "
            "from batches[2] onward; P(churned | features) unchanged"
        ),
        spec_options={
            "task": "binary",
            "primary_metric": "roc_auc",
            "thresholds": {"floor": 0.7, "min_absolute_change": 0.005, "secondary_tolerance": 0.02},
            "training_window_days": 90,
            "min_training_rows": 500,
            "mode": "auto",
        },
    ),
    _Blueprint(
        customer="northwind-lending",
        id_column="loan_id",
        id_prefix=None,
        timestamp_column="applied_at",
        label_column="defaulted",
        features=(
            ("credit_score", "numeric"),
            ("annual_income", "numeric"),
            ("loan_amount", "numeric"),
            ("debt_to_income", "numeric"),
            ("employment_years", "numeric"),
            ("loan_purpose", "categorical"),
            ("home_ownership", "categorical"),
            ("rate_type", "categorical"),
            ("state", "categorical"),
        ),
        generate=_lending_default,
        drift_kind="concept_drift",
        drift_from=3,
        drift=(
            "concept drift: from batches[3] onward defaults follow debt_to_income, loan burden and "
            "variable rates instead of credit_score and employment_years; features unchanged"
        ),
        spec_options={
            "task": "binary",
            "primary_metric": "roc_auc",
            "thresholds": {"floor": 0.7, "min_absolute_change": 0.01, "secondary_tolerance": 0.02},
            "training_window_days": 120,
            "min_training_rows": 500,
            "mode": "approve",
        },
    ),
    _Blueprint(
        customer="corner-market",
        id_column="order_id",
        id_prefix="ord-",
        timestamp_column="ordered_at",
        label_column="is_fraud",
        features=(
            ("basket_value", "numeric"),
            ("items_count", "numeric"),
            ("account_age_days", "numeric"),
            ("hour_of_day", "numeric"),
            ("cards_used_30d", "numeric"),
            ("address_mismatch", "numeric"),
            ("payment_method", "categorical"),
            ("device_type", "categorical"),
            ("store_region", "categorical"),
        ),
        generate=_retail_fraud,
        hour_feature="hour_of_day",
        drift_kind="new_category",
        drift_from=2,
        drift=(
            f"new category: payment_method '{RETAIL_NEW_PAYMENT_METHOD}' (buy now, pay later, riskier) "
            f"in ~{RETAIL_NEW_PAYMENT_SHARE:.0%} of orders from batches[2] onward"
        ),
        spec_options={
            "task": "binary",
            "primary_metric": "roc_auc",
            "thresholds": {"floor": 0.7, "min_absolute_change": 0.005, "secondary_tolerance": 0.03},
            "training_window_days": 60,
            "min_training_rows": 500,
            "mode": "auto",
        },
    ),
    _Blueprint(
        customer="atlas-support",
        id_column="ticket_id",
        id_prefix="TCK-",
        timestamp_column="created_at",
        label_column="priority",
        features=(
            ("affected_users", "numeric"),
            ("message_length", "numeric"),
            ("account_mrr", "numeric"),
            ("sentiment_score", "numeric"),
            ("open_tickets", "numeric"),
            ("customer_tier", "categorical"),
            ("product_area", "categorical"),
            ("channel", "categorical"),
        ),
        generate=_support_priority,
        drift_kind="label_shift",
        drift_from=3,
        drift=(
            f"label-rate change (prior shift): priority 'high' goes from {SUPPORT_PRIORS[2]:.0%} to "
            f"{SUPPORT_PRIORS_DRIFTED[2]:.0%} of tickets from batches[3] onward; features given the class unchanged"
        ),
        spec_options={
            "task": "multiclass",
            "primary_metric": "f1",
            "thresholds": {"floor": 0.5, "min_absolute_change": 0.01, "secondary_tolerance": 0.03},
            "training_window_days": 90,
            "min_training_rows": 500,
            "mode": "auto",
        },
    ),
    _Blueprint(
        customer="swiftcart-delivery",
        id_column="delivery_id",
        id_prefix=None,
        timestamp_column="ordered_at",
        label_column="delivery_minutes",
        features=(
            ("distance_km", "numeric"),
            ("items_count", "numeric"),
            ("order_hour", "numeric"),
            ("prep_minutes", "numeric"),
            ("courier_active_orders", "numeric"),
            ("weather", "categorical"),
            ("vehicle", "categorical"),
            ("zone", "categorical"),
        ),
        generate=_delivery_time,
        hour_feature="order_hour",
        drift_kind="covariate_shift",
        drift_from=2,
        drift=(
            f"covariate shift (categorical): winter, weather 'snow' goes from {DELIVERY_WEATHER_P[4]:.0%} to "
            f"{DELIVERY_WEATHER_P_DRIFTED[4]:.0%} of orders from batches[2] onward; delivery_minutes rise"
        ),
        spec_options={
            "task": "regression",
            "primary_metric": "rmse",
            "thresholds": {"floor": 12.0, "min_relative_change": 0.01, "secondary_tolerance": 0.03},
            "training_window_days": 90,
            "min_training_rows": 500,
            "mode": "auto",
        },
    ),
)

DEMO_CUSTOMER_NAMES: tuple[str, ...] = tuple(b.customer for b in _BLUEPRINTS)
_BY_NAME = {b.customer: b for b in _BLUEPRINTS}


# ---------------------------------------------------------------------------------------------------
# Public API


def generate_customer_frame(
    customer: str,
    rows: int,
    *,
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    rng: np.random.Generator | int = 0,
    drifted: bool = False,
    first_id: int = 1,
) -> pd.DataFrame:
    """Generate `rows` labelled rows of a demo customer, timestamps spread over [start, end).

    `drifted` switches the customer's injected drift on. Ids are `first_id`, `first_id + 1`, ...
    (with the customer's prefix for string ids), so consecutive frames can continue the numbering.
    Fully vectorised: a million rows take a couple of seconds.
    """
    if customer not in _BY_NAME:
        raise ValueError(f"unknown demo customer {customer!r}; known: {list(DEMO_CUSTOMER_NAMES)}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    blueprint = _BY_NAME[customer]
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    columns = blueprint.generate(generator, rows, drifted)
    timestamps = _timestamps(generator, rows, start, end)
    if blueprint.hour_feature is not None:
        timestamps = _at_hour(generator, timestamps, columns[blueprint.hour_feature], start, end)
        order = np.argsort(timestamps, kind="stable")
        timestamps = timestamps[order]
        columns = {name: values[order] for name, values in columns.items()}
    return pd.DataFrame(
        {
            blueprint.id_column: _ids(first_id, rows, blueprint.id_prefix),
            blueprint.timestamp_column: pd.Series(timestamps, dtype="datetime64[ns]"),
            **{name: columns[name] for name, _ in blueprint.features},
            blueprint.label_column: columns[blueprint.label_column],
        }
    )


def batch_window(index: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The [start, end) of weekly batch `index` (0-based): week `index + 1` after the history."""
    start = HISTORY_END + pd.Timedelta(days=BATCH_DAYS * index)
    return start, start + pd.Timedelta(days=BATCH_DAYS)


def demo_customers(
    seed: int = 0,
    history_rows: int = DEFAULT_HISTORY_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    n_batches: int = DEFAULT_BATCHES,
    drift: bool = True,
) -> list[DemoCustomer]:
    """The demo customers, each with a different drift, reproducible from `seed`.

    History covers the 120 days up to 2026-09-30; batch `i` is the `i + 1`-th week after it. Each
    customer's drift starts at batch `drift_from` (2 or 3), so the first batches look like the history.
    Without `drift`, every batch is drawn like the history: the control a retraining policy is judged on.
    """
    if not 0 <= n_batches <= MAX_BATCHES:
        raise ValueError(
            f"n_batches must be between 0 and {MAX_BATCHES} (all timestamps stay before {TIMESTAMP_LIMIT.date()})"
        )
    if history_rows < 1 or batch_rows < 1:
        raise ValueError("history_rows and batch_rows must be positive")
    history_start = HISTORY_END - pd.Timedelta(days=HISTORY_DAYS)
    customers = []
    for number, blueprint in enumerate(_BLUEPRINTS):
        history = generate_customer_frame(
            blueprint.customer,
            history_rows,
            start=history_start,
            end=HISTORY_END,
            rng=_rng(seed, number, 0),
        )
        batches = []
        for index in range(n_batches):
            start, end = batch_window(index)
            batches.append(
                generate_customer_frame(
                    blueprint.customer,
                    batch_rows,
                    start=start,
                    end=end,
                    rng=_rng(seed, number, index + 1),
                    drifted=drift and index >= blueprint.drift_from,
                    first_id=1 + history_rows + index * batch_rows,
                )
            )
        customers.append(
            DemoCustomer(
                spec=blueprint.spec(),
                history=history,
                batches=batches,
                drift=blueprint.drift if drift else "no drift: every batch is drawn like the history",
                drift_kind=blueprint.drift_kind if drift else "none",
                drift_from=blueprint.drift_from if drift else None,
            )
        )
    return customers


def make_benchmark_frame(rows: int = 50_000, n_features: int = 20, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """A large binary-classification frame and its spec, for benchmarks.

    A fifth of the features are categorical (long-tailed, 8 to 40 levels), the rest numeric (half of
    them skewed, some with 2% missing values); the label is a noisy logistic function of most of them
    plus one interaction. Columns: `event_id`, `event_time`, `f00`... , `label`.
    """
    if rows < 1 or n_features < 1:
        raise ValueError("rows and n_features must be positive")
    rng = np.random.default_rng([seed, 1_000_003])
    n_categorical = n_features // 5
    n_numeric = n_features - n_categorical

    gaussian = rng.normal(0.0, 1.0, (rows, n_numeric))
    skewed = np.arange(n_numeric) % 2 == 1
    numeric = np.where(skewed, np.exp(0.8 * gaussian), gaussian)
    weights = rng.normal(0.0, 1.0, n_numeric) * (rng.random(n_numeric) < 0.75)
    logit = (gaussian @ weights) / np.sqrt(max(1.0, float(np.sum(weights**2)))) * 2.0
    if n_numeric >= 2:
        logit += 0.8 * gaussian[:, 0] * gaussian[:, 1]

    columns: dict[str, np.ndarray] = {}
    for j in range(n_numeric):
        values = np.round(numeric[:, j], 4)
        columns[f"f{j:02d}"] = _with_missing(rng, values, 0.02) if j % 4 == 3 else values
    for k in range(n_categorical):
        levels = int(rng.integers(8, 41))
        index = rng.choice(levels, size=rows, p=_long_tail(levels))
        level_effects = rng.normal(0.0, 0.6, levels)
        logit += level_effects[index]
        names = np.char.add(f"c{k}_", np.arange(levels).astype(str)).astype(object)
        columns[f"f{n_numeric + k:02d}"] = names[index]
    label = _bernoulli(rng, logit - 1.0)

    feature_names = list(columns)
    frame = pd.DataFrame(
        {
            "event_id": np.arange(1, rows + 1, dtype=np.int64),
            "event_time": pd.Series(
                _timestamps(rng, rows, HISTORY_END - pd.Timedelta(days=365), HISTORY_END), dtype="datetime64[ns]"
            ),
            **columns,
            "label": label,
        }
    )
    spec = {
        "customer": "benchmark",
        "landing_table": "landing_benchmark",
        "timestamp_column": "event_time",
        "label_column": "label",
        "id_column": "event_id",
        "features": [
            {"name": name, "kind": "numeric" if j < n_numeric else "categorical"}
            for j, name in enumerate(feature_names)
        ],
        "task": "binary",
        "primary_metric": "roc_auc",
        "thresholds": {"floor": 0.6},
        "training_window_days": 365,
        "min_training_rows": 500,
        "mode": "auto",
    }
    return frame, spec
