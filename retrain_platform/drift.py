"""Data drift: compare a new batch with the reference a model was trained on.

`build_baseline` summarises the reference once into a `Baseline` of a few kilobytes (quantile bins, category
frequencies, a small sorted sample, the prediction and label distributions) that is stored as JSON with the
model version. `detect` compares a batch, or a stream of chunks of one, with that baseline in bounded memory
and returns a `DriftResult`; the training data is never needed again.

    baseline = build_baseline(train_df, {"age": "numeric", "plan": "categorical"}, predictions=train_scores)
    result = detect(Baseline.from_json(baseline.to_json()), batch_df, predictions=batch_scores)
    result.columns, result.drift_share, result.dataset_drifted, result.prediction_drift

How a column is judged (each rule can mark it drifted on its own; `reason` says which did):

1. Distribution. With few values on either side (min(n_reference, n_current) <= `small_sample`) a p-value
   test decides, drift when p < `p_value`: two-sample Kolmogorov-Smirnov against the stored reference sample
   for numeric columns, chi-square homogeneity on the category counts for categorical ones. With more
   values a p-value flags shifts far too small to matter, so an effect size decides: the Wasserstein
   distance divided by the reference standard deviation (numeric) or the Jensen-Shannon distance in base 2,
   between 0 and 1 (categorical), or the PSI on reference deciles or categories; drift when one of them
   reaches its threshold and a test says the difference is not sampling noise (chi-square on the same bins
   or categories; for numeric columns also KS, taking the smaller p-value times two).
2. New category. A category the reference did not record (never seen, or not among its `max_categories`
   most frequent) that makes up at least `new_category_share` of the batch, significantly more (binomial
   test) than any unrecorded reference category had.
3. Missing values. The share of missing values (for numeric columns: also non-numeric and non-finite ones)
   moves by at least `missing_share`, absolute, in either direction, and a chi-square test says it is not
   noise.

The dataset drifts when the share of drifted features reaches `dataset_share`, each feature weighted by the
model's importance when the baseline knows it (unweighted otherwise). Chi-square tests pool
categories until every expected count is at least 5, and the distances pool categories under
`rare_category_share` in both samples into one "other" bucket, so categories seen in only one sample, or a
handful of times, do not create drift. Numeric values are compared as float32: a difference below seven
significant digits is not drift, and it halves the size of the stored sample.
"""

from __future__ import annotations

import base64
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats
from scipy.spatial import distance

__all__ = [
    "Baseline",
    "CategoricalProfile",
    "DriftResult",
    "DriftThresholds",
    "FeatureThresholds",
    "NumericProfile",
    "PREDICTION",
    "build_baseline",
    "detect",
]

BASELINE_FORMAT = 1
PREDICTION = "__prediction__"
DEFAULT_CHUNK_SIZE = 250_000
DEFAULT_BINS = 50
DEFAULT_SAMPLE_SIZE = 1_000
DEFAULT_MAX_CATEGORIES = 200
PSI_GROUPS = 10
PSI_EPSILON = 1e-4
MIN_EXPECTED_COUNT = 5.0
# scipy's ks_2samp computes exact p-values up to this many values per sample; beyond it we use the same
# asymptotic distribution it would.
KS_EXACT_LIMIT = 10_000
MAX_TRACKED_NEW_CATEGORIES = 10_000

Kind = Literal["numeric", "categorical"]

RESULT_COLUMNS = [
    "column",
    "kind",
    "method",
    "statistic",
    "threshold",
    "p_value",
    "drifted",
    "reason",
    "distance",
    "psi",
    "n_reference",
    "n_current",
    "missing_reference",
    "missing_current",
]


# --------------------------------------------------------------------------------------------- thresholds


class FeatureThresholds(BaseModel):
    """Overrides for one feature; a field left as None keeps the global value."""

    model_config = ConfigDict(extra="forbid")

    p_value: float | None = Field(default=None, gt=0.0, lt=1.0)
    wasserstein: float | None = Field(default=None, gt=0.0)
    jensen_shannon: float | None = Field(default=None, gt=0.0, le=1.0)
    psi: float | None = Field(default=None, gt=0.0)
    small_sample: int | None = Field(default=None, ge=0)
    new_category_share: float | None = Field(default=None, gt=0.0, le=1.0)
    rare_category_share: float | None = Field(default=None, ge=0.0, lt=1.0)
    missing_share: float | None = Field(default=None, gt=0.0, le=1.0)


class DriftThresholds(BaseModel):
    """When a column, and the dataset, count as drifted.

    `p_value` applies to every significance test; `wasserstein` (in reference standard deviations),
    `jensen_shannon` (base 2) and `psi` are effect sizes used above `small_sample` values; `dataset_share`
    is the share of drifted features at which the whole dataset drifts; `new_category_share` and
    `missing_share` are shares of the batch; categories below `rare_category_share` in both samples are
    pooled as "other" for the distances. `per_feature` maps a column (or `PREDICTION`) to overrides.
    """

    model_config = ConfigDict(extra="forbid")

    p_value: float = Field(default=0.05, gt=0.0, lt=1.0)
    wasserstein: float = Field(default=0.1, gt=0.0)
    jensen_shannon: float = Field(default=0.1, gt=0.0, le=1.0)
    psi: float = Field(default=0.2, gt=0.0)
    small_sample: int = Field(default=1000, ge=0)
    dataset_share: float = Field(default=0.5, gt=0.0, le=1.0)
    new_category_share: float = Field(default=0.05, gt=0.0, le=1.0)
    rare_category_share: float = Field(default=0.005, ge=0.0, lt=1.0)
    missing_share: float = Field(default=0.05, gt=0.0, le=1.0)
    per_feature: dict[str, FeatureThresholds] = Field(default_factory=dict)

    def for_column(self, column: str) -> DriftThresholds:
        """The thresholds that apply to `column`: the global ones with its overrides applied."""
        override = self.per_feature.get(column)
        values = self.model_dump(exclude={"per_feature"})
        if override is not None:
            values.update(override.model_dump(exclude_none=True))
        return DriftThresholds(**values)


def _as_thresholds(value: DriftThresholds | Mapping[str, Any] | None) -> DriftThresholds | None:
    if value is None or isinstance(value, DriftThresholds):
        return value
    return DriftThresholds.model_validate(dict(value))


# ----------------------------------------------------------------------------------------------- profiles


@dataclass
class NumericProfile:
    """The reference distribution of one numeric column.

    `edges` are the interior bin edges (reference quantiles; the outer bins reach -inf and +inf), `counts`
    and `means` describe each of the len(edges) + 1 bins, and `sample` is a sorted uniform sample of at most
    `sample_size` values (all of them when the reference is that small) for the Kolmogorov-Smirnov test.
    """

    n: int
    n_missing: int
    edges: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    sample: np.ndarray
    mean: float | None
    std: float | None
    iqr: float | None
    min: float | None
    max: float | None
    kind: Kind = field(default="numeric", init=False)

    @property
    def missing_share(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else 0.0

    @property
    def spread(self) -> float:
        """The scale Wasserstein distances are divided by: the standard deviation, or a fallback when 0."""
        for candidate in (self.std, (self.iqr or 0.0) / 1.349, abs(self.mean or 0.0)):
            if candidate and candidate > 0 and math.isfinite(candidate):
                return float(candidate)
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "numeric",
            "n": self.n,
            "n_missing": self.n_missing,
            "edges": _float32_list(self.edges),
            "counts": [int(c) for c in self.counts],
            "means": _float32_list(self.means),
            "sample": base64.b64encode(self.sample.astype("<f4").tobytes()).decode("ascii"),
            "mean": self.mean,
            "std": self.std,
            "iqr": self.iqr,
            "min": self.min,
            "max": self.max,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericProfile:
        return cls(
            n=int(data["n"]),
            n_missing=int(data["n_missing"]),
            edges=np.asarray(data["edges"], dtype=np.float32),
            counts=np.asarray(data["counts"], dtype=np.int64),
            means=np.asarray(data["means"], dtype=np.float32),
            sample=np.frombuffer(base64.b64decode(data["sample"]), dtype="<f4").astype(np.float32),
            mean=data["mean"],
            std=data["std"],
            iqr=data["iqr"],
            min=data["min"],
            max=data["max"],
        )


@dataclass
class CategoricalProfile:
    """The reference distribution of one categorical column.

    `categories` are the most frequent categories (first) with their `counts`; everything else is pooled
    in `other_count`, of which the largest single category had `max_other_share` of the reference.
    Categories are compared as strings, with integral floats written as integers so that 1 and 1.0 match.
    """

    n: int
    n_missing: int
    categories: list[str]
    counts: np.ndarray
    other_count: int
    other_distinct: int
    max_other_share: float
    kind: Kind = field(default="categorical", init=False)

    @property
    def missing_share(self) -> float:
        total = self.n + self.n_missing
        return self.n_missing / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "categorical",
            "n": self.n,
            "n_missing": self.n_missing,
            "categories": list(self.categories),
            "counts": [int(c) for c in self.counts],
            "other_count": self.other_count,
            "other_distinct": self.other_distinct,
            "max_other_share": self.max_other_share,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalProfile:
        return cls(
            n=int(data["n"]),
            n_missing=int(data["n_missing"]),
            categories=[str(c) for c in data["categories"]],
            counts=np.asarray(data["counts"], dtype=np.int64),
            other_count=int(data["other_count"]),
            other_distinct=int(data["other_distinct"]),
            max_other_share=float(data["max_other_share"]),
        )


Profile = NumericProfile | CategoricalProfile


def _profile_from_dict(data: Mapping[str, Any]) -> Profile:
    if data["kind"] == "numeric":
        return NumericProfile.from_dict(data)
    if data["kind"] == "categorical":
        return CategoricalProfile.from_dict(data)
    raise ValueError(f"unknown profile kind {data['kind']!r}")


@dataclass
class Baseline:
    """What drift detection needs to know about the reference data; a few kilobytes, JSON-serialisable."""

    features: dict[str, Profile]
    n_rows: int
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    prediction: Profile | None = None
    label: Profile | None = None
    # How much the model relies on each feature (sums to 1): the dataset verdict then weighs drift by it.
    importance: dict[str, float] | None = None

    @property
    def kinds(self) -> dict[str, str]:
        return {name: profile.kind for name, profile in self.features.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BASELINE_FORMAT,
            "n_rows": self.n_rows,
            "thresholds": self.thresholds.model_dump(exclude_none=True),
            "features": {name: profile.to_dict() for name, profile in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "label": None if self.label is None else self.label.to_dict(),
            "importance": self.importance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        if data.get("format") != BASELINE_FORMAT:
            raise ValueError(f"unsupported baseline format {data.get('format')!r}; expected {BASELINE_FORMAT}")
        return cls(
            features={name: _profile_from_dict(profile) for name, profile in data["features"].items()},
            n_rows=int(data["n_rows"]),
            thresholds=DriftThresholds.model_validate(data["thresholds"]),
            prediction=None if data.get("prediction") is None else _profile_from_dict(data["prediction"]),
            label=None if data.get("label") is None else _profile_from_dict(data["label"]),
            importance=data.get("importance"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Baseline:
        return cls.from_dict(json.loads(text))


# ------------------------------------------------------------------------------------- value conversions


def _float32_list(values: np.ndarray) -> list[float]:
    # The shortest decimal that identifies a float32 keeps the JSON small and still round-trips exactly.
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def _as_float32(series: pd.Series) -> np.ndarray:
    """Numeric values as float32; anything that is not a finite number becomes NaN."""
    dtype = series.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        if pd.api.types.is_bool_dtype(dtype):
            return series.to_numpy(dtype=np.float32, na_value=np.nan)
        if pd.api.types.is_numeric_dtype(dtype):
            if isinstance(dtype, np.dtype):
                return series.to_numpy().astype(np.float32)
            return series.to_numpy(dtype=np.float32, na_value=np.nan)
        numbers = pd.to_numeric(series, errors="coerce")
        return numbers.to_numpy(dtype=np.float32, na_value=np.nan)


def category_label(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _category_labels(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.CategoricalIndex):
        index = pd.Index(index.to_numpy())
    if pd.api.types.is_bool_dtype(index.dtype) or pd.api.types.is_integer_dtype(index.dtype):
        return index.astype(str)
    if pd.api.types.is_float_dtype(index.dtype):
        values = index.to_numpy(dtype=np.float64)
        integral = np.isfinite(values) & (values == np.round(values))
        with np.errstate(invalid="ignore"):
            as_int = np.where(integral, values, 0).astype(np.int64).astype(str)
        return pd.Index(np.where(integral, as_int, values.astype(str)).astype(object))
    if index.inferred_type == "string":
        return index
    return pd.Index([category_label(v) for v in index], dtype=object)


def _category_counts(series: pd.Series) -> tuple[pd.Series, int]:
    """Counts per category label (missing values excluded) and the number of missing values."""
    counts = series.value_counts(dropna=True, sort=False)
    counts = counts[counts > 0]
    n_missing = len(series) - int(counts.sum())
    return labelled_counts(counts), n_missing


def labelled_counts(counts: pd.Series) -> pd.Series:
    """Counts per raw value (a `value_counts`, or a warehouse's GROUP BY) as counts per category label: the
    values 1, 1.0 and "1" are one category."""
    labelled = pd.Series(counts.to_numpy(dtype=np.int64), index=_category_labels(counts.index))
    if labelled.index.has_duplicates:
        labelled = labelled.groupby(level=0, sort=False).sum()
    return labelled


def _bin_sorted(sorted_values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and sums per bin of already sorted values; bins are (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    n = len(sorted_values)
    positions = np.searchsorted(sorted_values, edges, side="left")
    counts = np.diff(positions, prepend=0, append=n).astype(np.int64)
    sums = np.zeros(len(counts), dtype=np.float64)
    occupied = counts > 0
    if n:
        starts = np.concatenate(([0], positions))[occupied]
        sums[occupied] = np.add.reduceat(sorted_values, starts, dtype=np.float64)
    return counts, sums


def _bin_means(counts: np.ndarray, sums: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # An empty bin carries no weight; its nearest edge is only a finite placeholder.
    placeholder = np.concatenate((edges[:1], edges)) if len(edges) else np.zeros(1)
    means = np.divide(sums, counts, out=placeholder.astype(np.float64), where=counts > 0)
    return means


# ---------------------------------------------------------------------------------------------- baseline


def _numeric_profile(series: pd.Series, n_bins: int, sample_size: int, rng: np.random.Generator) -> NumericProfile:
    values = _as_float32(series)
    finite = np.isfinite(values)
    n_missing = int(len(values) - np.count_nonzero(finite))
    ordered = np.sort(values[finite])
    n = len(ordered)
    if n == 0:
        empty = np.zeros(0, dtype=np.float32)
        return NumericProfile(
            n=0, n_missing=n_missing, edges=empty, counts=np.zeros(1, dtype=np.int64),
            means=np.zeros(1, dtype=np.float32), sample=empty, mean=None, std=None, iqr=None, min=None, max=None,
        )
    quantiles = np.quantile(ordered, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    edges = np.unique(quantiles.astype(np.float32))
    counts, sums = _bin_sorted(ordered, edges)
    q25, q75 = np.quantile(ordered, [0.25, 0.75])
    sample = ordered[np.sort(rng.choice(n, size=sample_size, replace=False))] if n > sample_size else ordered
    return NumericProfile(
        n=n,
        n_missing=n_missing,
        edges=edges,
        counts=counts,
        means=_bin_means(counts, sums, edges).astype(np.float32),
        sample=sample.astype(np.float32),
        mean=float(np.mean(ordered, dtype=np.float64)),
        std=float(np.std(ordered, dtype=np.float64)),
        iqr=float(q75 - q25),
        min=float(ordered[0]),
        max=float(ordered[-1]),
    )


def _categorical_profile(series: pd.Series, max_categories: int) -> CategoricalProfile:
    counts, n_missing = _category_counts(series)
    n = int(counts.sum())
    order = sorted(zip(counts.index, counts.to_numpy()), key=lambda item: (-item[1], item[0]))
    # Rare categories are kept too and only pooled at comparison time, on the counts of both samples:
    # pooling on the reference counts alone would keep exactly the rare categories that were frequent in
    # the reference by chance, and every later batch would seem to have lost them.
    kept = [(label, int(count)) for label, count in order[:max_categories]]
    pooled = order[len(kept):]
    return CategoricalProfile(
        n=n,
        n_missing=n_missing,
        categories=[label for label, _ in kept],
        counts=np.asarray([count for _, count in kept], dtype=np.int64),
        other_count=int(sum(count for _, count in pooled)),
        other_distinct=len(pooled),
        max_other_share=float(pooled[0][1] / n) if pooled else 0.0,
    )


def _profile(
    series: pd.Series, kind: str, *, n_bins: int, sample_size: int, max_categories: int, rng: np.random.Generator,
) -> Profile:
    if kind == "numeric":
        return _numeric_profile(series, n_bins, sample_size, rng)
    if kind == "categorical":
        return _categorical_profile(series, max_categories)
    raise ValueError(f"kind {kind!r} is not 'numeric' or 'categorical'")


def _one_dimensional(values: Any, what: str) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"{what}: expected one value per row (a score, a positive-class probability or a class), "
            f"got shape {array.shape}"
        )
    return pd.Series(array)


def _infer_kind(values: pd.Series) -> Kind:
    return "numeric" if pd.api.types.is_float_dtype(values.dtype) else "categorical"


def build_baseline(
    reference_df: pd.DataFrame,
    kinds: Mapping[str, str],
    *,
    predictions: Any = None,
    labels: Any = None,
    thresholds: DriftThresholds | Mapping[str, Any] | None = None,
    seed: int = 0,
    prediction_kind: Kind | None = None,
    label_kind: Kind | None = None,
    n_bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    max_categories: int = DEFAULT_MAX_CATEGORIES,
    importance: Mapping[str, float] | None = None,
) -> Baseline:
    """Summarise the reference data into a small `Baseline` that `detect` compares batches with.

    `kinds` maps each feature column to "numeric" or "categorical". `predictions` (one value per row:
    scores, positive-class probabilities or classes) and `labels` are optional; their kind is numeric for
    floats and categorical otherwise unless `prediction_kind` / `label_kind` say. `thresholds` become the
    defaults of `detect`. Numeric columns get `n_bins` quantile bins and a sorted sample of `sample_size`
    values drawn with `seed`; categorical ones keep the counts of their `max_categories` most frequent
    categories and pool the rest as "other". `importance` (feature -> weight) makes the dataset verdict of
    `detect` weigh each drifted feature by how much the model relies on it.
    """
    if n_bins < 2:
        raise ValueError("n_bins: at least 2 bins are needed")
    if sample_size < 1:
        raise ValueError("sample_size: must be at least 1")
    absent = [column for column in kinds if column not in reference_df.columns]
    if absent:
        raise ValueError(f"kinds: column(s) {absent} are not in the reference data")
    if not kinds:
        raise ValueError("kinds: at least one feature column is needed")
    rng = np.random.default_rng(seed)
    options = dict(
        n_bins=n_bins, sample_size=sample_size, max_categories=max_categories, rng=rng,
    )
    features: dict[str, Profile] = {}
    for column, kind in kinds.items():
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"kinds: {column!r} has kind {kind!r}; use 'numeric' or 'categorical'")
        features[column] = _profile(reference_df[column], kind, **options)
    prediction = label = None
    if predictions is not None:
        series = _one_dimensional(predictions, "predictions")
        prediction = _profile(series, prediction_kind or _infer_kind(series), **options)
    if labels is not None:
        series = _one_dimensional(labels, "labels")
        label = _profile(series, label_kind or _infer_kind(series), **options)
    return Baseline(
        features=features,
        n_rows=len(reference_df),
        thresholds=_as_thresholds(thresholds) or DriftThresholds(),
        prediction=prediction,
        label=label,
        importance=dict(importance) if importance else None,
    )


# ------------------------------------------------------------------------------------ streaming counters


class _NumericCounter:
    """Accumulates, chunk by chunk, what the comparison of one numeric column needs; memory is bounded."""

    def __init__(self, profile: NumericProfile):
        self.profile = profile
        self.n = 0
        self.n_missing = 0
        self.counts = np.zeros(len(profile.edges) + 1, dtype=np.int64)
        self.sums = np.zeros(len(profile.edges) + 1, dtype=np.float64)
        # The KS statistic is exact without keeping the batch: it only needs the current ECDF on each side
        # of every distinct reference sample value.
        self.ks_points, ref_at_or_below = np.unique(profile.sample, return_counts=True)
        self.reference_cdf = np.cumsum(ref_at_or_below) / max(len(profile.sample), 1)
        self.below = np.zeros(len(self.ks_points), dtype=np.int64)
        self.at_or_below = np.zeros(len(self.ks_points), dtype=np.int64)
        self.raw: list[np.ndarray] | None = []

    def add(self, series: pd.Series) -> None:
        values = _as_float32(series)
        finite = np.isfinite(values)
        n_finite = int(np.count_nonzero(finite))
        self.n_missing += len(values) - n_finite
        if n_finite < len(values):
            values = values[finite]
        ordered = np.sort(values)
        self.n += n_finite
        counts, sums = _bin_sorted(ordered, self.profile.edges)
        self.counts += counts
        self.sums += sums
        self.below += np.searchsorted(ordered, self.ks_points, side="left")
        self.at_or_below += np.searchsorted(ordered, self.ks_points, side="right")
        if self.raw is not None:
            self.raw.append(ordered)
            if self.n > KS_EXACT_LIMIT:
                self.raw = None

    def ks(self) -> tuple[float, float]:
        """Two-sample KS statistic and p-value of the batch against the reference sample."""
        m, n = len(self.profile.sample), self.n
        if self.raw is not None:
            with warnings.catch_warnings():
                # When the exact p-value does not converge scipy falls back to the asymptotic one, as we would.
                warnings.filterwarnings("ignore", "ks_2samp: Exact calculation unsuccessful", RuntimeWarning)
                result = stats.ks_2samp(self.profile.sample, np.concatenate(self.raw))
            return float(result.statistic), float(result.pvalue)
        cdf_at = self.at_or_below / n
        cdf_before = self.below / n
        gaps = np.concatenate((
            np.abs(self.reference_cdf - cdf_at),
            np.abs(self.reference_cdf[:-1] - cdf_before[1:]),
            cdf_before[:1],
        ))
        statistic = float(gaps.max())
        return statistic, float(stats.kstwo.sf(statistic, round(m * n / (m + n))))


class _CategoricalCounter:
    """Accumulates category counts of one column; unknown categories are tracked up to a bounded number."""

    def __init__(self, profile: CategoricalProfile):
        self.profile = profile
        self.index = pd.Index(profile.categories, dtype=object)
        self.n = 0
        self.n_missing = 0
        self.counts = np.zeros(len(profile.categories), dtype=np.int64)
        self.other_count = 0
        self.unknown = pd.Series(dtype=np.int64)

    def add(self, series: pd.Series) -> None:
        counts, n_missing = _category_counts(series)
        self.n_missing += n_missing
        self.n += int(counts.sum())
        position = self.index.get_indexer(counts.index)
        known = position >= 0
        values = counts.to_numpy()
        self.counts[position[known]] += values[known]
        unknown = counts[~known]
        if len(unknown):
            self.other_count += int(unknown.sum())
            self.unknown = self.unknown.add(unknown, fill_value=0).astype(np.int64)
            if len(self.unknown) > MAX_TRACKED_NEW_CATEGORIES:
                # A pruned category held at most 1/5,000 of the rows seen so far, so one that makes up a
                # substantial share of the whole batch survives with its count nearly exact.
                self.unknown = self.unknown.nlargest(MAX_TRACKED_NEW_CATEGORIES // 2)


def _counter(profile: Profile) -> _NumericCounter | _CategoricalCounter:
    return _NumericCounter(profile) if profile.kind == "numeric" else _CategoricalCounter(profile)


# ------------------------------------------------------------------------------------------- statistics


def _chi_square(reference: np.ndarray, current: np.ndarray, *, last_is_other: bool = False) -> tuple[float, float]:
    """Chi-square homogeneity test of two count vectors, pooling cells until expected counts are >= 5.

    Cells are pooled smallest first: a category seen in only one sample, or a handful of times, then
    cannot decide the test on its own (the p = 0 that scipy's defaults give for it is a known false alarm).
    With `last_is_other`, the last cell holds the categories the reference did not record and is always
    pooled: which categories it holds was decided by the reference counts alone.
    """
    table = np.vstack((reference, current)).astype(np.float64)
    pooled = table[:, -1] if last_is_other else np.zeros(2)
    if last_is_other:
        table = table[:, :-1]
    table = table[:, table.sum(axis=0) > 0]
    row_totals = table.sum(axis=1) + pooled
    if row_totals.min() == 0:
        return 0.0, 1.0
    needed = MIN_EXPECTED_COUNT * row_totals.sum() / row_totals.min()
    table = table[:, np.argsort(-table.sum(axis=0), kind="stable")]
    enough = int(np.searchsorted(-table.sum(axis=0), -needed, side="right"))
    pooled = pooled + table[:, enough:].sum(axis=1)
    table = table[:, :enough]
    if pooled.sum() > 0:
        if pooled.sum() < needed and table.shape[1] > 1:
            pooled = pooled + table[:, -1]
            table = table[:, :-1]
        table = np.hstack((table, pooled[:, None]))
    if table.shape[1] < 2:
        return 0.0, 1.0
    statistic, p_value, _, _ = stats.chi2_contingency(table, correction=False)
    return float(statistic), float(p_value)


def _psi(reference: np.ndarray, current: np.ndarray) -> float:
    ref = np.clip(reference / max(reference.sum(), 1), PSI_EPSILON, None)
    cur = np.clip(current / max(current.sum(), 1), PSI_EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _decile_groups(reference_counts: np.ndarray) -> np.ndarray:
    """Group of each fine bin so that PSI is computed on about ten equally likely reference bins.

    PSI's usual thresholds (0.1, 0.2, 0.25) were set for about ten bins; with more bins it grows with noise.
    """
    share_before = (np.cumsum(reference_counts) - reference_counts) / max(reference_counts.sum(), 1)
    return np.minimum((share_before * PSI_GROUPS + 1e-9).astype(np.int64), PSI_GROUPS - 1)


def _missing_rule(
    ref_missing: int, ref_total: int, cur_missing: int, cur_total: int, limits: DriftThresholds
) -> str | None:
    if not ref_total or not cur_total:
        return None
    before, after = ref_missing / ref_total, cur_missing / cur_total
    if abs(after - before) < limits.missing_share:
        return None
    table = np.array([[ref_missing, ref_total - ref_missing], [cur_missing, cur_total - cur_missing]])
    if (table.sum(axis=0) == 0).any():
        return None
    p_value = stats.chi2_contingency(table).pvalue
    if p_value >= limits.p_value:
        return None
    return f"missing share {before:.1%} -> {after:.1%}"


def _empty_row(column: str, profile: Profile, counter: Any) -> dict[str, Any]:
    current_total = counter.n + counter.n_missing
    return {
        "column": column,
        "kind": profile.kind,
        "method": "none",
        "statistic": math.nan,
        "threshold": math.nan,
        "p_value": math.nan,
        "drifted": False,
        "reason": "",
        "distance": math.nan,
        "psi": math.nan,
        "n_reference": profile.n,
        "n_current": counter.n,
        "missing_reference": profile.missing_share,
        "missing_current": counter.n_missing / current_total if current_total else 0.0,
    }


def _compare_numeric(column: str, profile: NumericProfile, counter: _NumericCounter, limits: DriftThresholds) -> dict:
    row = _empty_row(column, profile, counter)
    reasons = []
    if profile.n and counter.n:
        groups = _decile_groups(profile.counts)
        row["psi"] = psi = _psi(
            np.bincount(groups, weights=profile.counts, minlength=PSI_GROUPS),
            np.bincount(groups, weights=counter.counts, minlength=PSI_GROUPS),
        )
        current_means = _bin_means(counter.counts, counter.sums, profile.edges)
        wasserstein = stats.wasserstein_distance(
            profile.means.astype(np.float64), current_means, profile.counts, counter.counts
        )
        row["distance"] = normalised = float(wasserstein / profile.spread)
        if min(profile.n, counter.n) <= limits.small_sample:
            statistic, p_value = counter.ks()
            row.update(method="ks", statistic=statistic, threshold=limits.p_value, p_value=p_value)
            if p_value < limits.p_value:
                reasons.append(f"ks p={p_value:.2g} < {limits.p_value:g}")
        else:
            # The bins miss a shift that stays inside one bin (a constant reference, say) and the KS test on
            # the small reference sample misses small shifts on big batches: either may say "not noise".
            _, binned_p = _chi_square(profile.counts, counter.counts)
            p_value = min(1.0, 2 * min(binned_p, counter.ks()[1]))
            row.update(method="wasserstein", statistic=normalised, threshold=limits.wasserstein, p_value=p_value)
            if p_value < limits.p_value:
                if normalised >= limits.wasserstein:
                    reasons.append(f"normalised wasserstein {normalised:.3g} >= {limits.wasserstein:g}")
                if psi >= limits.psi:
                    reasons.append(f"psi {psi:.3g} >= {limits.psi:g}")
    missing = _missing_rule(profile.n_missing, profile.n + profile.n_missing, counter.n_missing,
                            counter.n + counter.n_missing, limits)
    if missing:
        reasons.append(missing)
    row.update(drifted=bool(reasons), reason="; ".join(reasons))
    return row


def _new_categories(profile: CategoricalProfile, counter: _CategoricalCounter, limits: DriftThresholds) -> list[str]:
    if not counter.n or counter.unknown.empty:
        return []
    candidates = counter.unknown[counter.unknown / counter.n >= limits.new_category_share]
    if candidates.empty:
        return []
    # The largest share an unrecorded reference category had; 1/n when the reference recorded them all.
    ceiling = max(profile.max_other_share, 1.0 / max(profile.n, 1))
    p_values = stats.binom.sf(candidates.to_numpy() - 1, counter.n, ceiling)
    flagged = candidates[p_values < limits.p_value].sort_values(ascending=False)
    return [f"new category {label!r} is {count / counter.n:.1%} of the batch" for label, count in flagged.items()]


def _pool_rare_categories(
    reference: np.ndarray, current: np.ndarray, rare_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pool categories (the last count is "other") that are rare in both samples into "other".

    Rarity is judged on the average of the two distributions, so neither sample decides alone; a long
    tail of small categories otherwise adds noise to the Jensen-Shannon distance and the PSI.
    """
    mixture = (reference / reference.sum() + current / current.sum()) / 2
    rare = mixture < rare_share
    rare[-1] = True
    return (
        np.append(reference[~rare], reference[rare].sum()),
        np.append(current[~rare], current[rare].sum()),
    )


def _compare_categorical(
    column: str, profile: CategoricalProfile, counter: _CategoricalCounter, limits: DriftThresholds
) -> dict:
    row = _empty_row(column, profile, counter)
    reasons = []
    if profile.n and counter.n:
        reference = np.append(profile.counts, profile.other_count)
        current = np.append(counter.counts, counter.other_count)
        statistic, p_value = _chi_square(reference, current, last_is_other=True)
        reference, current = _pool_rare_categories(reference, current, limits.rare_category_share)
        row["psi"] = psi = _psi(reference, current)
        js = distance.jensenshannon(reference / reference.sum(), current / current.sum(), base=2)
        row["distance"] = js = float(js)
        if min(profile.n, counter.n) <= limits.small_sample:
            row.update(method="chi_square", statistic=statistic, threshold=limits.p_value, p_value=p_value)
            if p_value < limits.p_value:
                reasons.append(f"chi-square p={p_value:.2g} < {limits.p_value:g}")
        else:
            row.update(method="jensen_shannon", statistic=js, threshold=limits.jensen_shannon, p_value=p_value)
            if p_value < limits.p_value:
                if js >= limits.jensen_shannon:
                    reasons.append(f"jensen-shannon {js:.3g} >= {limits.jensen_shannon:g}")
                if psi >= limits.psi:
                    reasons.append(f"psi {psi:.3g} >= {limits.psi:g}")
        reasons.extend(_new_categories(profile, counter, limits))
    missing = _missing_rule(profile.n_missing, profile.n + profile.n_missing, counter.n_missing,
                            counter.n + counter.n_missing, limits)
    if missing:
        reasons.append(missing)
    row.update(drifted=bool(reasons), reason="; ".join(reasons))
    return row


def _compare(column: str, profile: Profile, counter: Any, limits: DriftThresholds) -> dict[str, Any]:
    if profile.kind == "numeric":
        return _compare_numeric(column, profile, counter, limits)
    return _compare_categorical(column, profile, counter, limits)


# ------------------------------------------------------------------------------------------------ detect


@dataclass
class DriftResult:
    """Drift of one batch against a baseline.

    `columns` has one row per feature (see `RESULT_COLUMNS`); `drift_share` is the share of drifted
    features and `dataset_drifted` whether it reached the dataset threshold; `prediction_drift` is the
    same kind of row for the model's predictions, when they were given. With a baseline that knows the
    model's feature importance, `importance_share` is the share of that importance that drifted, and it is
    what the dataset verdict compares with the threshold: drift of features the model ignores is no reason
    to retrain it.
    """

    columns: pd.DataFrame
    drift_share: float
    dataset_drifted: bool
    n_rows: int
    thresholds: DriftThresholds
    prediction_drift: dict[str, Any] | None = None
    importance_share: float | None = None

    @property
    def drifted_columns(self) -> list[str]:
        return self.columns.loc[self.columns["drifted"], "column"].tolist()

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable data (NaN becomes None)."""
        return {
            "drift_share": self.drift_share,
            "importance_share": self.importance_share,
            "dataset_drifted": self.dataset_drifted,
            "n_rows": self.n_rows,
            "drifted_columns": self.drifted_columns,
            "columns": [_plain_row(row) for row in self.columns.to_dict(orient="records")],
            "prediction_drift": None if self.prediction_drift is None else _plain_row(self.prediction_drift),
            "thresholds": self.thresholds.model_dump(exclude_none=True),
        }


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    plain = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        plain[key] = value
    return plain


def _frames(current: pd.DataFrame | Iterable[pd.DataFrame], chunk_size: int) -> Iterator[pd.DataFrame]:
    chunks = [current] if isinstance(current, pd.DataFrame) else current
    for chunk in chunks:
        if not isinstance(chunk, pd.DataFrame):
            raise TypeError(f"current: expected a DataFrame or an iterable of DataFrames, got {type(chunk).__name__}")
        for start in range(0, len(chunk), chunk_size):
            yield chunk.iloc[start:start + chunk_size]


def _arrays(values: Any, chunk_size: int) -> Iterator[pd.Series]:
    if isinstance(values, (pd.Series, np.ndarray, list, tuple)):
        values = [values]
    for chunk in values:
        series = _one_dimensional(chunk, "predictions")
        for start in range(0, len(series), chunk_size):
            yield series.iloc[start:start + chunk_size]


def detect(
    baseline: Baseline,
    current: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    predictions: Any = None,
    thresholds: DriftThresholds | Mapping[str, Any] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> DriftResult:
    """Compare a batch with the baseline, feature by feature, in memory bounded by `chunk_size` rows.

    `current` is a DataFrame or an iterable of DataFrame chunks (read lazily, each processed in slices of at
    most `chunk_size` rows). `predictions` are the model's outputs for the batch: an array, a Series, an
    iterable of arrays, or the name of a column of `current`. `thresholds` default to the baseline's.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size: must be at least 1")
    limits = _as_thresholds(thresholds) or baseline.thresholds
    unknown = sorted(set(limits.per_feature) - set(baseline.features) - {PREDICTION})
    if unknown:
        raise ValueError(f"thresholds.per_feature: {unknown} are not features of the baseline")
    counters = {column: _counter(profile) for column, profile in baseline.features.items()}
    prediction_counter = prediction_column = None
    if predictions is not None:
        if baseline.prediction is None:
            raise ValueError(
                "predictions: the baseline has no prediction distribution (pass predictions= to build_baseline)"
            )
        prediction_counter = _counter(baseline.prediction)
        if isinstance(predictions, str):
            prediction_column = predictions
        else:
            for chunk in _arrays(predictions, chunk_size):
                prediction_counter.add(chunk)

    n_rows = 0
    needed = list(counters) + ([prediction_column] if prediction_column else [])
    for chunk in _frames(current, chunk_size):
        absent = [column for column in needed if column not in chunk.columns]
        if absent:
            raise ValueError(f"current: column(s) {absent} of the baseline are not in the batch")
        for column, counter in counters.items():
            counter.add(chunk[column])
        if prediction_column:
            prediction_counter.add(chunk[prediction_column])
        n_rows += len(chunk)

    rows = [
        _compare(column, baseline.features[column], counter, limits.for_column(column))
        for column, counter in counters.items()
    ]
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    drift_share = float(table["drifted"].mean()) if len(table) else 0.0
    importance_share = None
    if baseline.importance and len(table):
        weights = table["column"].map(baseline.importance).fillna(0.0).to_numpy(dtype=float)
        if weights.sum() > 0:
            importance_share = float(weights[table["drifted"].to_numpy(dtype=bool)].sum() / weights.sum())
    verdict_share = drift_share if importance_share is None else importance_share
    prediction_drift = None
    if prediction_counter is not None:
        prediction_drift = _compare(PREDICTION, baseline.prediction, prediction_counter, limits.for_column(PREDICTION))
    return DriftResult(
        columns=table,
        drift_share=drift_share,
        dataset_drifted=bool(len(table)) and verdict_share >= limits.dataset_share,
        n_rows=n_rows,
        thresholds=limits,
        prediction_drift=prediction_drift,
        importance_share=importance_share,
    )
