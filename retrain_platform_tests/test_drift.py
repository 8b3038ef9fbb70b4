import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats

from retrain_platform.drift import (
    PREDICTION,
    Baseline,
    DriftThresholds,
    build_baseline,
    detect,
)

NUMERIC = [
    "age", "income", "balance", "tenure", "visits", "latency", "score", "ratio", "debt", "clicks",
]
CATEGORICAL = ["plan", "region", "device", "referrer"]
KINDS = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
REGIONS = [f"region_{i}" for i in range(12)]
REFERRERS = [f"site_{i}" for i in range(400)]


def population(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Customer-like rows: symmetric, skewed, heavy-tailed, discrete and partly missing numeric columns,
    and categorical columns from a few levels up to a long tail of rare referrers."""
    region_p = np.geomspace(1, 0.05, len(REGIONS))
    referrer_p = np.r_[[0.3, 0.2], np.full(len(REFERRERS) - 2, 0.5 / (len(REFERRERS) - 2))]
    frame = pd.DataFrame({
        "age": rng.normal(40, 12, n),
        "income": rng.lognormal(10, 1.0, n),
        "balance": rng.standard_t(2, n) * 1000,
        "tenure": rng.exponential(3, n),
        "visits": rng.poisson(3, n).astype(float),
        "latency": rng.pareto(2.5, n),
        "score": rng.beta(2, 5, n),
        "ratio": rng.uniform(0, 1, n),
        "debt": np.where(rng.random(n) < 0.6, 0.0, rng.gamma(2, 500, n)),
        "clicks": rng.negative_binomial(2, 0.1, n).astype(float),
        "plan": rng.choice(["free", "basic", "pro"], n, p=[0.6, 0.3, 0.1]),
        "region": rng.choice(REGIONS, n, p=region_p / region_p.sum()),
        "device": rng.choice(["ios", "android", "web", None], n, p=[0.3, 0.3, 0.35, 0.05]),
        "referrer": rng.choice(REFERRERS, n, p=referrer_p),
    })
    frame.loc[rng.random(n) < 0.1, "tenure"] = np.nan
    return frame


def split(n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two random halves of n rows each from one population."""
    rng = np.random.default_rng(seed)
    rows = population(2 * n, rng)
    order = rng.permutation(2 * n)
    return rows.iloc[order[:n]].reset_index(drop=True), rows.iloc[order[n:]].reset_index(drop=True)


def verdicts(result) -> dict[str, bool]:
    return dict(zip(result.columns["column"], result.columns["drifted"]))


@pytest.mark.parametrize(("n", "seeds"), [(1_000, 20), (50_000, 4)])
def test_a_reference_split_against_itself_rarely_drifts(n, seeds):
    shares, dataset_alarms = [], 0
    for seed in range(seeds):
        reference, current = split(n, seed)
        result = detect(build_baseline(reference, KINDS, seed=seed), current)
        shares.append(result.drift_share)
        dataset_alarms += result.dataset_drifted
    assert np.mean(shares) <= 0.10
    assert dataset_alarms <= 0.05 * seeds


def test_method_follows_the_sample_size():
    reference, current = split(1_000, 0)
    small = detect(build_baseline(reference, KINDS), current).columns.set_index("column")
    assert set(small.loc[NUMERIC, "method"]) == {"ks"}
    assert set(small.loc[CATEGORICAL, "method"]) == {"chi_square"}
    assert (small["threshold"] == 0.05).all()

    reference, current = split(20_000, 0)
    large = detect(build_baseline(reference, KINDS), current).columns.set_index("column")
    assert set(large.loc[NUMERIC, "method"]) == {"wasserstein"}
    assert set(large.loc[CATEGORICAL, "method"]) == {"jensen_shannon"}
    assert (large.loc[NUMERIC, "threshold"] == 0.1).all()
    assert large["psi"].notna().all() and large["distance"].notna().all()


@pytest.mark.parametrize("n", [1_000, 50_000])
@pytest.mark.parametrize("shifted", ["age", "income"])
def test_a_mean_shift_of_one_std_is_flagged_in_that_feature_only(n, shifted):
    false_alarms = []
    for seed in range(3):
        reference, current = split(n, seed)
        baseline = build_baseline(reference, KINDS)
        current[shifted] += reference[shifted].std()
        result = detect(baseline, current)
        drifted = verdicts(result)
        assert drifted[shifted], result.columns
        false_alarms.append(sum(drifted[c] for c in KINDS if c != shifted))
        if n >= 50_000:
            row = result.columns.set_index("column").loc[shifted]
            assert row["distance"] == pytest.approx(1.0, abs=0.1)
    # p-value tests at 1,000 rows keep their 5% false alarm rate on the 13 untouched columns.
    assert max(false_alarms) <= (2 if n < 50_000 else 0)


@pytest.mark.parametrize("n", [1_000, 50_000])
def test_a_substantial_new_category_is_flagged(n):
    reference, current = split(n, 1)
    baseline = build_baseline(reference, KINDS)
    rng = np.random.default_rng(5)
    current.loc[rng.random(n) < 0.2, "plan"] = "enterprise"
    row = detect(baseline, current).columns.set_index("column").loc["plan"]
    assert row["drifted"]
    assert "new category 'enterprise'" in row["reason"]


@pytest.mark.parametrize("n", [1_000, 50_000])
def test_rare_categories_seen_in_only_one_sample_do_not_drift(n):
    rng = np.random.default_rng(2)
    common = rng.choice(["a", "b", "c"], size=2 * n, p=[0.5, 0.3, 0.2]).astype(object)
    # Disjoint long tails: 8% of each sample spread over 200 categories the other sample never has.
    tail = rng.random(2 * n) < 0.08
    common[tail] = [f"tail_{i}" for i in rng.integers(0, 200, tail.sum())]
    reference = pd.DataFrame({"source": common[:n]})
    current = pd.DataFrame({"source": common[n:]})
    current.loc[current["source"].str.startswith("tail_"), "source"] = current["source"].str.replace("tail_", "other_")
    assert not set(reference["source"]) & set(current["source"]) - {"a", "b", "c"}

    result = detect(build_baseline(reference, {"source": "categorical"}), current)
    assert not result.columns.loc[0, "drifted"], result.columns.loc[0, "reason"]
    # The textbook chi-square on the raw categories calls the same data drifted.
    union = sorted(set(reference["source"]) | set(current["source"]))
    table = [reference["source"].value_counts().reindex(union, fill_value=0),
             current["source"].value_counts().reindex(union, fill_value=0)]
    assert stats.chi2_contingency(table)[1] < 0.05


def test_chunked_detection_matches_the_whole_frame():
    reference, current = split(30_000, 3)
    current["age"] += 2.0
    current.loc[current.index % 7 == 0, "plan"] = "enterprise"
    baseline = build_baseline(reference, KINDS, predictions=reference["score"].to_numpy())
    whole = detect(baseline, current, predictions=current["score"].to_numpy())

    bounds = [0, 1, 4_000, 4_001, 17_500, 30_000]
    chunks = (current.iloc[a:b] for a, b in zip(bounds, bounds[1:]))
    predictions = (current["score"].iloc[a:b].to_numpy() for a, b in zip(bounds, bounds[1:]))
    streamed = detect(baseline, chunks, predictions=predictions, chunk_size=3_000)

    left, right = whole.columns, streamed.columns
    assert left["drifted"].tolist() == right["drifted"].tolist()
    assert left["method"].tolist() == right["method"].tolist()
    assert left["n_current"].tolist() == right["n_current"].tolist()
    for name in ("statistic", "p_value", "distance", "psi"):
        np.testing.assert_allclose(left[name], right[name], rtol=1e-9, atol=1e-12)
    assert whole.drift_share == streamed.drift_share and whole.n_rows == streamed.n_rows == 30_000
    assert whole.prediction_drift["statistic"] == pytest.approx(streamed.prediction_drift["statistic"], rel=1e-9)


def test_small_batches_are_streamed_with_the_exact_ks_statistic():
    rng = np.random.default_rng(4)
    reference = pd.DataFrame({"x": rng.normal(size=800)})
    current = pd.DataFrame({"x": rng.normal(0.1, 1.0, size=40_000)})
    baseline = build_baseline(reference, {"x": "numeric"})
    row = detect(baseline, (current.iloc[i:i + 5_000] for i in range(0, 40_000, 5_000))).columns.loc[0]
    expected = stats.ks_2samp(reference["x"].astype(np.float32), current["x"].astype(np.float32), method="asymp")
    assert row["method"] == "ks"
    assert row["statistic"] == pytest.approx(expected.statistic, abs=1e-12)
    assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-6)


def test_baseline_round_trips_through_json_and_is_small():
    rng = np.random.default_rng(6)
    frame = population(100_000, rng)
    for i in range(6):
        frame[f"extra_{i}"] = rng.gamma(1 + i, 2.0, len(frame))
    kinds = {**KINDS, **{f"extra_{i}": "numeric" for i in range(6)}}
    assert len(kinds) == 20
    baseline = build_baseline(
        frame, kinds, predictions=rng.random(len(frame)), labels=rng.random(len(frame)) < 0.3,
        thresholds={"psi": 0.25, "per_feature": {"age": {"wasserstein": 0.3}}},
    )
    text = baseline.to_json()
    assert len(text.encode()) < 200_000
    restored = Baseline.from_json(text)
    assert restored.to_dict() == baseline.to_dict() == json.loads(text)
    assert restored.thresholds.for_column("age").wasserstein == 0.3
    assert restored.label.kind == "categorical" and restored.prediction.kind == "numeric"
    label_share = dict(zip(restored.label.categories, restored.label.counts / restored.label.n))
    assert label_share["True"] == pytest.approx(0.3, abs=0.01)

    current = population(5_000, rng).assign(**{f"extra_{i}": rng.gamma(1 + i, 2.0, 5_000) for i in range(6)})
    a, b = detect(baseline, current).columns, detect(restored, current).columns
    pd.testing.assert_frame_equal(a, b)


def test_thresholds_per_feature_are_honoured():
    reference, current = split(20_000, 7)
    current["age"] += 0.3 * reference["age"].std()
    current["ratio"] += 0.3 * reference["ratio"].std()
    baseline = build_baseline(reference, KINDS)
    assert verdicts(detect(baseline, current))["age"]

    lenient = {"per_feature": {"age": {"wasserstein": 0.5, "psi": 1.0}}}
    result = verdicts(detect(baseline, current, thresholds=lenient))
    assert not result["age"] and result["ratio"]

    stored = build_baseline(reference, KINDS, thresholds=lenient)
    assert not verdicts(detect(stored, current))["age"]

    table = detect(baseline, current, thresholds=DriftThresholds(per_feature={"age": {"wasserstein": 0.5, "psi": 1.0}}))
    assert table.columns.set_index("column").loc["age", "threshold"] == 0.5

    with pytest.raises(ValueError, match="agee"):
        detect(baseline, current, thresholds={"per_feature": {"agee": {"wasserstein": 0.5}}})
    with pytest.raises(ValidationError):
        DriftThresholds(per_feature={"age": {"wasserstien": 0.5}})


def test_dataset_verdict_uses_the_share_of_drifted_features():
    reference, current = split(5_000, 8)
    baseline = build_baseline(reference, KINDS)
    for column in NUMERIC[:5]:
        current[column] = current[column] * 3 + 1
    result = detect(baseline, current)
    assert result.drift_share == pytest.approx(5 / 14)
    assert not result.dataset_drifted
    assert detect(baseline, current, thresholds={"dataset_share": 0.3}).dataset_drifted
    assert sorted(result.drifted_columns) == sorted(NUMERIC[:5])


@pytest.mark.parametrize("n", [1_000, 50_000])
def test_a_jump_in_missing_values_is_drift(n):
    reference, current = split(n, 9)
    baseline = build_baseline(reference, KINDS)
    rng = np.random.default_rng(1)
    current.loc[rng.random(n) < 0.3, "score"] = np.nan
    current.loc[rng.random(n) < 0.3, "region"] = None
    current.loc[rng.random(n) < 0.01, "ratio"] = np.nan
    rows = detect(baseline, current).columns.set_index("column")
    for column in ("score", "region"):
        assert rows.loc[column, "drifted"]
        assert "missing share 0.0% -> " in rows.loc[column, "reason"]
    assert rows.loc["score", "missing_current"] == pytest.approx(0.3, abs=0.03)
    assert "missing" not in rows.loc["ratio", "reason"]


def test_prediction_drift_is_reported_separately():
    rng = np.random.default_rng(10)
    reference, current = split(20_000, 10)
    scores = rng.beta(2, 5, 20_000)
    baseline = build_baseline(reference, KINDS, predictions=scores)
    stable = detect(baseline, current, predictions=rng.beta(2, 5, 20_000))
    assert stable.prediction_drift["column"] == PREDICTION and not stable.prediction_drift["drifted"]
    shifted = detect(baseline, current.assign(p=rng.beta(5, 2, 20_000)), predictions="p")
    assert shifted.prediction_drift["drifted"]
    assert shifted.drift_share == stable.drift_share
    assert shifted.to_dict()["prediction_drift"]["method"] == "wasserstein"

    classes = build_baseline(reference, KINDS, predictions=rng.choice(["yes", "no"], 20_000, p=[0.2, 0.8]))
    flipped = detect(classes, current, predictions=rng.choice(["yes", "no"], 20_000, p=[0.5, 0.5]))
    assert flipped.prediction_drift["kind"] == "categorical" and flipped.prediction_drift["drifted"]
    with pytest.raises(ValueError, match="no prediction"):
        detect(build_baseline(reference, KINDS), current, predictions=scores)


def test_integer_categories_match_their_float_form():
    rng = np.random.default_rng(11)
    reference = pd.DataFrame({"store": rng.integers(1, 6, 5_000)})
    current = pd.DataFrame({"store": rng.integers(1, 6, 5_000).astype(float)})
    current.loc[:9, "store"] = np.nan
    row = detect(build_baseline(reference, {"store": "categorical"}), current).columns.loc[0]
    assert not row["drifted"], row["reason"]
    assert row["distance"] < 0.05


def test_result_serialises_to_plain_json():
    reference, current = split(2_000, 12)
    current["income"] *= 2
    result = detect(build_baseline(reference, KINDS), current.iloc[:0])
    assert result.n_rows == 0 and result.drift_share == 0.0
    assert set(result.columns["method"]) == {"none"}
    data = json.loads(json.dumps(detect(build_baseline(reference, KINDS), current).to_dict(), allow_nan=False))
    assert data["drifted_columns"] == ["income"]
    assert {"column", "method", "statistic", "threshold", "drifted", "p_value"} <= set(data["columns"][0])


def test_bad_input_names_the_problem():
    reference, current = split(1_000, 13)
    with pytest.raises(ValueError, match="'age'.*'numerical'"):
        build_baseline(reference, {**KINDS, "age": "numerical"})
    with pytest.raises(ValueError, match="nope"):
        build_baseline(reference, {"nope": "numeric"})
    with pytest.raises(ValueError, match="region"):
        detect(build_baseline(reference, KINDS), current.drop(columns="region"))
    with pytest.raises(TypeError, match="DataFrame"):
        detect(build_baseline(reference, KINDS), [current.to_numpy()])


def test_the_dataset_verdict_weighs_drift_by_the_importance_the_model_gives_each_feature():
    rng = np.random.default_rng(11)
    reference = pd.DataFrame({"used": rng.normal(0, 1, 4000), "noise_a": rng.normal(0, 1, 4000), "noise_b": rng.normal(0, 1, 4000)})
    kinds = dict.fromkeys(reference.columns, "numeric")
    importance = {"used": 0.9, "noise_a": 0.05, "noise_b": 0.05}
    weighted = build_baseline(reference, kinds, importance=importance)
    plain = build_baseline(reference, kinds)
    assert Baseline.from_dict(json.loads(weighted.to_json())).importance == importance

    fresh = pd.DataFrame({name: rng.normal(0, 1, 2000) for name in reference.columns})
    ignored_moved = fresh.assign(noise_a=fresh["noise_a"] + 2, noise_b=fresh["noise_b"] + 2)
    # Two of three features drifted: the plain share says dataset drift; the model barely uses them.
    assert detect(plain, ignored_moved).dataset_drifted
    result = detect(weighted, ignored_moved)
    assert result.drift_share == pytest.approx(2 / 3)
    assert result.importance_share == pytest.approx(0.1)
    assert not result.dataset_drifted
    # One feature of three drifted, the one the model relies on: dataset drift.
    used_moved = fresh.assign(used=fresh["used"] + 2)
    assert not detect(plain, used_moved).dataset_drifted
    assert detect(weighted, used_moved).importance_share == pytest.approx(0.9)
    assert detect(weighted, used_moved).dataset_drifted
