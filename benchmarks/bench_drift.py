"""Benchmark `retrain_platform.drift` against Evidently's DataDriftPreset on the same data.

    PYTHONPATH=. python benchmarks/bench_drift.py [--rows 1000000]
    PYTHONPATH=. python benchmarks/bench_drift.py --peak-memory [--rows 10000000]

The default mode builds a reference and a current batch of `--rows` rows each (20 numeric and 3 categorical
columns, a few of them clearly shifted), times `build_baseline` and `detect`, then Evidently's preset, and
prints both times, their ratio and how the two agree on the shifted columns. Evidently is a benchmark
dependency only; keep it out of the runtime environment (it pins pandas < 3), e.g.

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install evidently "pandas<3" numpy scipy pydantic

`--peak-memory` streams a batch of `--rows` rows (10,000,000 by default), generated chunk by chunk, through
`detect` and reports the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd

from retrain_platform.drift import build_baseline, detect

NUMERIC = [f"num_{i:02d}" for i in range(20)]
CATEGORICAL = ["plan", "country", "channel"]
KINDS = {**{c: "numeric" for c in NUMERIC}, **{c: "categorical" for c in CATEGORICAL}}
COUNTRIES = np.array([f"country_{i}" for i in range(60)], dtype=object)
COUNTRY_P = np.geomspace(1.0, 0.01, len(COUNTRIES))
COUNTRY_P /= COUNTRY_P.sum()
# What the current batch changes: a mean shift, a change of spread, a shift of a skewed column, a new category.
SHIFTED = ["num_00", "num_07", "num_13", "channel"]


def make_rows(n: int, rng: np.random.Generator, *, shifted: bool) -> pd.DataFrame:
    columns: dict[str, np.ndarray] = {}
    for i, name in enumerate(NUMERIC):
        family = i % 4
        if family == 0:
            values = rng.normal(50.0, 10.0, n)
        elif family == 1:
            values = rng.lognormal(3.0, 1.0, n)
        elif family == 2:
            values = rng.exponential(5.0, n)
        else:
            values = rng.standard_t(3, n)
        columns[name] = values
    columns["plan"] = rng.choice(np.array(["free", "basic", "pro", "team"], dtype=object), n, p=[0.5, 0.3, 0.15, 0.05])
    columns["country"] = rng.choice(COUNTRIES, n, p=COUNTRY_P)
    columns["channel"] = rng.choice(np.array(["web", "ios", "android"], dtype=object), n, p=[0.5, 0.25, 0.25])
    if shifted:
        columns["num_00"] = columns["num_00"] + 10.0  # +1 std
        columns["num_07"] = columns["num_07"] * 2.0  # spread doubles
        columns["num_13"] = columns["num_13"] * 1.5 + 2.0  # lognormal shifted and stretched
        columns["channel"] = np.where(rng.random(n) < 0.2, "smart_tv", columns["channel"]).astype(object)
    return pd.DataFrame(columns)


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_evidently(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[float, dict[str, bool]] | None:
    try:
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:
        print(f"evidently is not importable ({exc}); install it in a separate venv to compare (see the docstring).")
        return None
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    start = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    result = snapshot.dict()
    seconds = time.perf_counter() - start
    verdicts = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if not config.get("type", "").endswith("ValueDrift"):
            continue
        value, threshold = metric["value"], config["threshold"]
        # Evidently's p-value tests drift below the threshold, its distances at or above it.
        is_p_value = "p_value" in config["method"]
        verdicts[config["column"]] = bool(value < threshold if is_p_value else value >= threshold)
    return seconds, verdicts


def compare(rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    reference = make_rows(rows, rng, shifted=False)
    current = make_rows(rows, rng, shifted=True)
    print(f"data: {rows:,} rows x {len(KINDS)} columns per side, generated in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    baseline = build_baseline(reference, KINDS)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = detect(baseline, current)
    detect_seconds = time.perf_counter() - start
    ours = dict(zip(result.columns["column"], result.columns["drifted"]))
    print(f"build_baseline: {build_seconds:.2f} s   (baseline JSON: {len(baseline.to_json()) / 1024:.0f} KB)")
    print(f"detect:         {detect_seconds:.2f} s   drifted: {result.drifted_columns}")

    evidently = run_evidently(reference, current)
    if evidently is None:
        return
    evidently_seconds, theirs = evidently
    drifted = sorted(column for column, verdict in theirs.items() if verdict)
    print(f"evidently DataDriftPreset: {evidently_seconds:.1f} s   drifted: {drifted}")
    print(f"speed-up: detect {evidently_seconds / detect_seconds:.0f}x faster; "
          f"build_baseline + detect {evidently_seconds / (build_seconds + detect_seconds):.0f}x faster")
    shifted_agree = sum(ours[c] == theirs.get(c) for c in SHIFTED)
    all_agree = sum(ours[c] == theirs.get(c) for c in KINDS)
    print(f"verdicts on the shifted columns {SHIFTED}: ours {[ours[c] for c in SHIFTED]}, "
          f"evidently {[theirs.get(c) for c in SHIFTED]} -> {shifted_agree}/{len(SHIFTED)} agree")
    print(f"verdicts on all columns: {all_agree}/{len(KINDS)} agree")


def stream(rows: int, chunk_rows: int, seed: int) -> Iterator[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk_rows):
        yield make_rows(min(chunk_rows, rows - start), rng, shifted=True)


def peak_memory(rows: int, seed: int, chunk_rows: int) -> None:
    baseline = build_baseline(make_rows(500_000, np.random.default_rng(seed), shifted=False), KINDS)
    print(f"after building the baseline from 500,000 rows: peak RSS {peak_rss_mb():.0f} MB")
    start = time.perf_counter()
    result = detect(baseline, stream(rows, chunk_rows, seed + 1))
    seconds = time.perf_counter() - start
    print(f"streamed {result.n_rows:,} rows in chunks of {chunk_rows:,} through detect in {seconds:.1f} s "
          f"(chunk generation included); drifted: {result.drifted_columns}")
    peak = peak_rss_mb()
    print(f"peak RSS: {peak:.0f} MB ({'under' if peak < 1536 else 'OVER'} the 1.5 GB budget)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help="rows per side (default 1,000,000; 10,000,000 with --peak-memory)")
    parser.add_argument("--peak-memory", action="store_true", help="stream a big batch in chunks, report peak RSS")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="rows per chunk in --peak-memory mode")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.peak_memory:
        peak_memory(args.rows or 10_000_000, args.seed, args.chunk_rows)
    else:
        compare(args.rows or 1_000_000, args.seed)


if __name__ == "__main__":
    main()
