"""Data profile: the exploratory summary a data scientist reads before trusting a model on a dataset.

`profile_frame` describes every column of a customer's spec (its missing values, distinct values,
distribution and association with the label), the label balance per time period, and lists in plain
sentences what deserves a look: constant or mostly missing columns, id-like categoricals, possible target
leakage, rare classes and periods whose label balance moved.

    profile = profile_frame(frame, complete_spec(parse_spec(data), frame))
    profile.to_markdown(), profile.chart_markdown(), json.dumps(profile.to_dict(), allow_nan=False)

What counts rows (`rows`, `labelled_rows`, `missing_share`, the label's class shares and `label_balance`)
always uses every row. What describes values (distinct counts, quantiles, top values, associations) uses a
seeded uniform sample of `max_rows` rows when the frame is larger, so a profile's cost is bounded.

Association with the label is between 0 (none) and 1 (the feature determines the label):
Cramér's V for a categorical feature against classes, |2 AUC - 1| (the Gini coefficient) for a numeric
feature against a binary label, Cramér's V on the deciles of a numeric feature against several classes,
|Spearman's rho| for a numeric feature against a numeric label and the correlation ratio eta for a
categorical feature against a numeric label.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from scipy.stats.contingency import association
from sklearn.metrics import roc_auc_score

from retrain_platform.drift import category_label
from retrain_platform.spec import CustomerSpec, SpecError

__all__ = [
    "COLUMN_FIELDS",
    "DataProfile",
    "label_association",
    "profile_frame",
]

COLUMN_FIELDS = (
    "column",
    "role",
    "kind",
    "dtype",
    "missing_share",
    "distinct",
    "mean",
    "std",
    "min",
    "p05",
    "median",
    "p95",
    "max",
    "top_values",
    "association",
    "association_method",
)
_STATISTICS = ("mean", "std", "min", "p05", "median", "p95", "max")

MOSTLY_MISSING_SHARE = 0.5
ID_LIKE_DISTINCT_SHARE = 0.5
LEAKAGE_ASSOCIATION = 0.95
RARE_CLASS_SHARE = 0.05
LABEL_SHARE_MOVE = 0.2
# Fewer rows than this leave an association, or an id-like verdict, to chance.
MIN_ROWS_FOR_ASSOCIATION = 10
# A period's class share only warns when it rests on at least this many labels.
MIN_PERIOD_LABELS = 30
# A numeric feature with this few distinct values is already binned: its values are the categories.
MAX_BINS = 10
TOP_VALUES_SHOWN = 3


@dataclass(eq=False)
class DataProfile:
    """An exploratory summary of one customer's dataset; see the module docstring for what is counted how.

    `columns` has one row per column of the spec (`COLUMN_FIELDS`); `label_balance` one row per time
    period with `period`, `rows`, `labelled_rows` and either `share:<class>` columns (classification, as
    shares of the period's labelled rows) or `label_mean` and `label_std` (regression). `sample_rows` is
    the size of the sample the distributions were computed on, None when every row was used.
    """

    customer: str
    rows: int
    labelled_rows: int
    time_range: tuple[pd.Timestamp | None, pd.Timestamp | None]
    columns: pd.DataFrame
    label_balance: pd.DataFrame
    warnings: list[str]
    task: str | None = None
    label_column: str | None = None
    sample_rows: int | None = None

    def to_markdown(self) -> str:
        """The headline, the columns table, the label balance table and the warnings, for the Dagster UI."""
        parts = [self._headline()]
        if self.sample_rows is not None:
            parts.append(
                f"Distributions and associations are computed on a random sample of {self.sample_rows:,} rows; "
                "row counts, missing shares and the label balance on all rows."
            )
        parts += ["### Columns", _columns_table(self.columns)]
        parts += ["### Label balance", _balance_table(self.label_balance)]
        parts.append("### Warnings")
        parts.append("\n".join(f"- {warning}" for warning in self.warnings) if self.warnings else "No warnings.")
        return "\n\n".join(parts)

    def _headline(self) -> str:
        labelled = f"{self.labelled_rows:,} labelled"
        if self.rows:
            labelled += f" ({self.labelled_rows / self.rows:.0%})"
        start, end = self.time_range
        period = f"from {start} to {end}" if start is not None else "no parseable timestamps"
        task = f"task {self.task}" if self.task else "task unknown"
        label = f" (label `{self.label_column}`)" if self.label_column else ""
        return f"**{self.customer}**: {self.rows:,} rows, {labelled}, {period}, {task}{label}."

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data: missing numbers are None, timestamps ISO 8601 strings."""
        return {
            "customer": self.customer,
            "rows": int(self.rows),
            "labelled_rows": int(self.labelled_rows),
            "time_range": [None if moment is None else moment.isoformat() for moment in self.time_range],
            "task": self.task,
            "label_column": self.label_column,
            "sample_rows": self.sample_rows,
            "columns": _records(self.columns),
            "label_balance": _records(self.label_balance),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataProfile:
        """The profile `to_dict` described."""
        columns = pd.DataFrame(data["columns"], columns=list(COLUMN_FIELDS))
        floats = ["missing_share", *_STATISTICS, "association"]
        columns[floats] = columns[floats].astype(float)
        columns["distinct"] = columns["distinct"].astype("int64")
        balance = pd.DataFrame(data["label_balance"])
        if len(balance):
            counted = ["period", "rows", "labelled_rows"]
            other = [name for name in balance.columns if name not in counted]
            balance[other] = balance[other].astype(float)
        start, end = (None if moment is None else pd.Timestamp(moment) for moment in data["time_range"])
        return cls(
            customer=data["customer"],
            rows=data["rows"],
            labelled_rows=data["labelled_rows"],
            time_range=(start, end),
            columns=columns,
            label_balance=balance,
            warnings=list(data["warnings"]),
            task=data.get("task"),
            label_column=data.get("label_column"),
            sample_rows=data.get("sample_rows"),
        )

    def chart_markdown(self) -> str:
        """An inline PNG: the label balance over time (left) and each feature's association with the label (right)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10, 3.2), dpi=80)
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        self._plot_label_balance(left)
        self._plot_associations(right)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f"![data profile](data:image/png;base64,{encoded})"

    def _plot_label_balance(self, axes) -> None:
        balance = self.label_balance
        label = self.label_column or "the label"
        if balance.empty:
            axes.text(0.5, 0.5, "no timestamped rows", ha="center", va="center", fontsize=9)
            axes.set_axis_off()
            return
        positions = np.arange(len(balance))
        share_columns = [name for name in balance.columns if name.startswith("share:")]
        if share_columns:
            bottom = np.zeros(len(balance))
            for name in share_columns:
                shares = balance[name].astype(float).fillna(0.0).to_numpy()
                axes.bar(positions, shares, bottom=bottom, width=0.9, label=name.removeprefix("share:"))
                bottom += shares
            axes.set_ylim(0, 1)
            axes.set_title(f"class shares of {label} per period", fontsize=9)
            if len(share_columns) <= 12:
                axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        elif "label_mean" in balance:
            mean = balance["label_mean"].astype(float).to_numpy()
            std = balance["label_std"].astype(float).fillna(0.0).to_numpy()
            axes.plot(positions, mean, "o-", markersize=3)
            axes.fill_between(positions, mean - std, mean + std, alpha=0.2)
            axes.set_title(f"mean of {label} per period (band: one std)", fontsize=9)
        step = max(1, math.ceil(len(balance) / 12))
        # A weekly period reads "2024-01-01/2024-01-07": its first day is enough on an axis.
        starts = balance["period"].str.split("/").str[0]
        axes.set_xticks(positions[::step], starts.iloc[::step], rotation=30, ha="right")
        axes.tick_params(labelsize=7)

    def _plot_associations(self, axes) -> None:
        features = self.columns[self.columns["role"] == "feature"].sort_values("association", na_position="first")
        strength = features["association"].astype(float).fillna(0.0).to_numpy()
        colors = np.where(strength >= LEAKAGE_ASSOCIATION, "#d62728", "#1f77b4")
        axes.barh(features["column"], strength, color=colors)
        axes.axvline(LEAKAGE_ASSOCIATION, color="grey", linestyle="--", linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_title("association with the label (dashed: possible leakage)", fontsize=9)
        axes.tick_params(labelsize=7)


def profile_frame(
    frame: pd.DataFrame, spec: CustomerSpec, *, period: str = "M", max_rows: int = 200_000, seed: int = 0
) -> DataProfile:
    """Profile `frame`, a customer's dataset described by a completed `spec` (see `spec.complete_spec`).

    `period` is a pandas period alias for the label balance ("M" months, "W" weeks, "D" days). Frames
    longer than `max_rows` have their distributions and associations computed on a uniform random sample
    of `max_rows` rows drawn with `seed`; row counts, missing shares and the label balance use every row.
    """
    if spec.task is None or spec.features is None:
        raise SpecError("spec: features and task must be known; complete the spec with complete_spec first")
    if max_rows < 1:
        raise ValueError(f"max_rows must be positive, got {max_rows}")
    spec_columns = _spec_columns(spec)
    absent = [column for column in spec_columns if column not in frame.columns]
    if absent:
        raise SpecError(f"columns {absent} of the spec are not in the data (columns: {list(frame.columns)})")

    positions = np.arange(len(frame))
    if len(frame) > max_rows:
        positions = np.sort(np.random.default_rng(seed).choice(len(frame), size=max_rows, replace=False))
    sample = frame[spec_columns].iloc[positions]

    timestamps = _parse_timestamps(frame[spec.timestamp_column])
    labels = frame[spec.label_column]
    classification = spec.task != "regression"
    class_counts = _class_counts(labels) if classification else None

    rows = [
        _feature_row(name, kind, frame[name], sample[name], sample[spec.label_column], spec.task)
        for name, kind in spec.kinds.items()
    ]
    rows.append(_label_row(spec, labels, sample[spec.label_column], class_counts))
    rows.append(
        _timestamp_row(spec.timestamp_column, frame[spec.timestamp_column], timestamps, timestamps.iloc[positions])
    )
    if spec.id_column is not None:
        rows.append(_id_row(spec.id_column, frame[spec.id_column], sample[spec.id_column]))
    columns = pd.DataFrame(rows, columns=list(COLUMN_FIELDS))
    columns["distinct"] = columns["distinct"].astype("int64")

    label_balance = _label_balance(timestamps, labels, class_counts, period)
    profile_warnings = _warnings(columns, sample.notna().sum(), spec, class_counts, label_balance)
    has_timestamps = timestamps.notna().any()
    return DataProfile(
        customer=spec.customer,
        rows=len(frame),
        labelled_rows=int(labels.notna().sum()),
        time_range=(timestamps.min(), timestamps.max()) if has_timestamps else (None, None),
        columns=columns,
        label_balance=label_balance,
        warnings=profile_warnings,
        task=spec.task,
        label_column=spec.label_column,
        sample_rows=len(sample) if len(sample) < len(frame) else None,
    )


def label_association(feature: pd.Series, label: pd.Series, kind: str, task: str) -> tuple[float, str]:
    """How strongly `feature` (of `kind` numeric or categorical) tells the label, from 0 to 1, and the method.

    Rows where either is missing are dropped; fewer than `MIN_ROWS_FOR_ASSOCIATION` rows left, or a
    constant feature or label, give NaN (with the method that would have been used).
    """
    if task == "regression":
        method = "spearman" if kind == "numeric" else "eta"
        label = _as_numbers(label)
    elif kind == "categorical":
        method = "cramer_v"
    else:
        method = "gini" if task == "binary" else "cramer_v_binned"
    if kind == "numeric":
        feature = _as_numbers(feature)
    kept = feature.notna() & label.notna()
    feature, label = feature[kept], label[kept]
    if len(feature) < MIN_ROWS_FOR_ASSOCIATION or feature.nunique() < 2 or label.nunique() < 2:
        return math.nan, method

    if method == "spearman":
        value = abs(spearmanr(feature.to_numpy(), label.to_numpy()).statistic)
    elif method == "eta":
        value = _correlation_ratio(feature, label)
    elif method == "gini":
        positive = _sorted_classes(label.unique())[-1]
        value = abs(2.0 * roc_auc_score((label == positive).to_numpy(), feature.to_numpy()) - 1.0)
    else:
        if method == "cramer_v_binned" and feature.nunique() > MAX_BINS:
            feature = pd.qcut(feature, MAX_BINS, duplicates="drop")
        table = pd.crosstab(feature, label)
        if min(table.shape) < 2:
            return math.nan, method
        value = association(table.to_numpy(), method="cramer")
    return float(min(value, 1.0)), method


# ---------------------------------------------------------------------------------------------------
# One row of the columns table per column of the spec


def _spec_columns(spec: CustomerSpec) -> list[str]:
    columns = [*spec.feature_names, spec.label_column, spec.timestamp_column]
    return columns if spec.id_column is None else [*columns, spec.id_column]


def _empty_row(column: str, role: str, kind: str, values: pd.Series) -> dict[str, Any]:
    return {
        "column": column,
        "role": role,
        "kind": kind,
        "dtype": str(values.dtype),
        "missing_share": float(values.isna().mean()) if len(values) else math.nan,
        "distinct": 0,
        **{name: math.nan for name in _STATISTICS},
        "top_values": "",
        "association": math.nan,
        "association_method": "",
    }


def _feature_row(
    column: str, kind: str, values: pd.Series, sampled: pd.Series, sampled_labels: pd.Series, task: str
) -> dict[str, Any]:
    row = _empty_row(column, "feature", kind, values)
    row["distinct"] = int(sampled.nunique())
    if kind == "numeric":
        row.update(_statistics(_as_numbers(sampled)))
    else:
        row["top_values"] = _top_values(sampled.value_counts())
    row["association"], row["association_method"] = label_association(sampled, sampled_labels, kind, task)
    return row


def _label_row(
    spec: CustomerSpec, labels: pd.Series, sampled: pd.Series, class_counts: pd.Series | None
) -> dict[str, Any]:
    kind = "numeric" if class_counts is None else "categorical"
    row = _empty_row(spec.label_column, "label", kind, labels)
    if class_counts is None:
        row["distinct"] = int(sampled.nunique())
        row.update(_statistics(_as_numbers(sampled)))
    else:
        # Class shares count every row, like the label balance they must agree with.
        row["distinct"] = len(class_counts)
        row["top_values"] = _top_values(class_counts.sort_values(ascending=False, kind="stable"))
    return row


def _timestamp_row(column: str, values: pd.Series, parsed: pd.Series, sampled: pd.Series) -> dict[str, Any]:
    row = _empty_row(column, "timestamp", "timestamp", values)
    row["missing_share"] = float(parsed.isna().mean()) if len(parsed) else math.nan
    row["distinct"] = int(sampled.nunique())
    return row


def _id_row(column: str, values: pd.Series, sampled: pd.Series) -> dict[str, Any]:
    row = _empty_row(column, "id", "id", values)
    row["distinct"] = int(sampled.nunique())
    return row


def _statistics(numbers: pd.Series) -> dict[str, float]:
    numbers = numbers.dropna()
    if numbers.empty:
        return {name: math.nan for name in _STATISTICS}
    quantiles = numbers.quantile([0.0, 0.05, 0.5, 0.95, 1.0]).to_numpy(dtype=float)
    return {
        "mean": float(numbers.mean()),
        "std": float(numbers.std()),
        **dict(zip(("min", "p05", "median", "p95", "max"), quantiles.tolist())),
    }


def _top_values(counts: pd.Series) -> str:
    """The most frequent values with their share of the non-missing values: "a 41%, b 33%, c 20%"."""
    total = counts.sum()
    if not total:
        return ""
    top = counts.iloc[:TOP_VALUES_SHOWN]
    return ", ".join(f"{category_label(value)} {count / total:.0%}" for value, count in top.items())


def _correlation_ratio(groups: pd.Series, numbers: pd.Series) -> float:
    """eta: the share of the label's spread explained by the feature's groups, as a square root."""
    centred = numbers.to_numpy(dtype=float) - numbers.mean()
    total = float(np.sum(centred**2))
    if total <= 0.0:
        return math.nan
    per_group = pd.Series(centred, index=numbers.index).groupby(groups, observed=True).agg(["count", "mean"])
    between = float((per_group["count"] * per_group["mean"] ** 2).sum())
    return math.sqrt(between / total)


# ---------------------------------------------------------------------------------------------------
# Label balance and warnings


def _class_counts(labels: pd.Series) -> pd.Series:
    """Labelled rows per class, indexed by class name, classes in their natural order."""
    counts = labels.value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]
    ordered = _sorted_classes(counts.index)
    counts = counts.reindex(ordered)
    counts.index = pd.Index([category_label(value) for value in ordered], dtype=object)
    return counts.groupby(level=0, sort=False).sum().astype("int64")


def _label_balance(
    timestamps: pd.Series, labels: pd.Series, class_counts: pd.Series | None, period: str
) -> pd.DataFrame:
    periods = timestamps.dt.to_period(period)
    by_period = pd.DataFrame({"period": periods, "label": labels}).groupby("period", observed=True)
    balance = pd.DataFrame({"rows": by_period.size(), "labelled_rows": by_period["label"].count()})
    if class_counts is None:
        numbers = _as_numbers(labels).groupby(periods, observed=True)
        balance["label_mean"] = numbers.mean()
        balance["label_std"] = numbers.std()
    else:
        counts = by_period["label"].value_counts().unstack(fill_value=0)
        counts.columns = [category_label(value) for value in counts.columns]
        counts = counts.T.groupby(level=0).sum().T.reindex(columns=class_counts.index, fill_value=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = counts.div(counts.sum(axis=1), axis=0)
        balance = balance.join(shares.add_prefix("share:"))
    balance.index = balance.index.astype(str)
    balance = balance.rename_axis("period").reset_index()
    balance[["rows", "labelled_rows"]] = balance[["rows", "labelled_rows"]].astype("int64")
    return balance


def _warnings(
    columns: pd.DataFrame,
    sampled_values: pd.Series,
    spec: CustomerSpec,
    class_counts: pd.Series | None,
    label_balance: pd.DataFrame,
) -> list[str]:
    found = []
    for row in columns.itertuples(index=False):
        if row.missing_share > MOSTLY_MISSING_SHARE:
            found.append(f"`{row.column}` is {row.missing_share:.0%} missing.")
        if row.distinct == 1:
            found.append(f"`{row.column}` is constant: every non-missing value is the same.")
        present = int(sampled_values[row.column])
        if row.role == "feature" and row.kind == "categorical" and present >= MIN_ROWS_FOR_ASSOCIATION:
            if row.distinct > ID_LIKE_DISTINCT_SHARE * present:
                found.append(
                    f"`{row.column}` looks like an identifier, not a category: "
                    f"{row.distinct:,} distinct values in {present:,} non-missing rows."
                )
        if row.role == "id" and row.distinct < present:
            found.append(f"id column `{row.column}` repeats values: {row.distinct:,} distinct in {present:,} rows.")
        if row.association >= LEAKAGE_ASSOCIATION:
            found.append(
                f"`{row.column}` almost determines the label (association {row.association:.2f} by "
                f"{row.association_method}): possible target leakage."
            )
    if class_counts is not None and class_counts.sum():
        found += _class_warnings(spec, class_counts, label_balance)
    return found


def _class_warnings(spec: CustomerSpec, class_counts: pd.Series, label_balance: pd.DataFrame) -> list[str]:
    label = spec.label_column
    overall = class_counts / class_counts.sum()
    found = [
        f"class {name!r} of `{label}` is {share:.1%} of labelled rows (under {RARE_CLASS_SHARE:.0%})."
        for name, share in overall.items()
        if share < RARE_CLASS_SHARE
    ]
    # In a binary task both classes move by the same amount: name the positive one only.
    watched = list(overall.index[-1:]) if spec.task == "binary" else list(overall.index)
    enough_labels = label_balance["labelled_rows"] >= MIN_PERIOD_LABELS
    shares = label_balance[enough_labels].set_index("period")[[f"share:{name}" for name in watched]]
    shares.columns = watched
    moves = shares - overall[watched]
    for period, period_moves in moves.iterrows():
        if not (period_moves.abs() > LABEL_SHARE_MOVE).any():
            continue
        name = period_moves.abs().idxmax()
        found.append(
            f"`{label}` in {period}: class {name!r} is {shares.at[period, name]:.0%} of labelled rows, "
            f"against {overall[name]:.0%} overall."
        )
    return found


# ---------------------------------------------------------------------------------------------------
# Values


def _parse_timestamps(values: pd.Series) -> pd.Series:
    """Naive UTC timestamps; what cannot be parsed is NaT."""
    if not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)):
        return pd.to_datetime(values, errors="coerce", utc=True).dt.tz_localize(None)
    # Text read with one format inferred from its first value would lose every ISO 8601 variant that
    # differs from it ("2024-01-05" then "2024-02-01T10:00:00Z"), so ISO 8601 comes first.
    parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
    retry = parsed.isna() & values.notna()
    if retry.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            parsed[retry] = pd.to_datetime(values[retry], errors="coerce", utc=True)
    return parsed.dt.tz_localize(None)


def _as_numbers(values: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype("float64")
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _sorted_classes(values) -> list:
    values = list(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=category_label)


# ---------------------------------------------------------------------------------------------------
# Output


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT or value is pd.NA:
        return None
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{name: _plain(value) for name, value in row.items()} for row in frame.to_dict("records")]


def _number(value: float) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if 1e4 <= abs(value) < 1e15:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _escaped(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _columns_table(columns: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "column": columns["column"].map(_escaped),
            "role": columns["role"],
            "kind": columns["kind"],
            "dtype": columns["dtype"],
            "missing": columns["missing_share"].map(lambda share: f"{share:.1%}" if math.isfinite(share) else ""),
            "distinct": columns["distinct"].map(lambda count: f"{count:,}"),
            **{name: columns[name].map(_number) for name in _STATISTICS},
            "top values": columns["top_values"].map(_escaped),
            "association": [
                f"{value:.3f} ({method})" if math.isfinite(value) else ""
                for value, method in zip(columns["association"], columns["association_method"])
            ],
        }
    )
    return shown.to_markdown(index=False, disable_numparse=True)


def _balance_table(balance: pd.DataFrame) -> str:
    if balance.empty:
        return "No timestamped rows."
    shown = balance.copy()
    for name in shown.columns:
        if name.startswith("share:"):
            shown[name] = shown[name].map(lambda share: f"{share:.1%}" if math.isfinite(share) else "")
        elif name in ("label_mean", "label_std"):
            shown[name] = shown[name].map(_number)
        elif name in ("rows", "labelled_rows"):
            shown[name] = shown[name].map(lambda count: f"{count:,}")
    shown.columns = [_escaped(name) for name in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True)


PROFILES_TABLE = "data_profiles"


def stored_warnings(warehouse, customer: str) -> list[str]:
    """The warnings of the customer's stored profile (empty when it has none yet)."""
    import json

    from retrain_platform.warehouse import quote

    if not warehouse.table_exists(PROFILES_TABLE):
        return []
    rows = warehouse.query(f'select "profile_json" from {quote(PROFILES_TABLE)} where "customer" = ?', [customer])
    return json.loads(rows.iloc[0, 0]).get("warnings", []) if len(rows) else []
