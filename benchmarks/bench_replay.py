"""Time a replay of the six policies: 20,000 rows, 50 batches, every policy on the real platform.

Run by hand: `python benchmarks/bench_replay.py [--rows 20000] [--batches 50] [--workers N]`. Prints the
wall time (target: under 10 minutes on 2 cores), each policy's own time, trainings and compute seconds, and,
as the reference on the same data in the same run, the bare scikit-learn cost of the `always` policy: the
same trainings (a hyper-parameter search at every 8th, refits of its choice in between; five of
each timed, scaled to all), with no Dagster, MLflow, checks, scoring or drift.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: a fresh temporary folder")
    parser.add_argument("--search-iterations", type=int, default=None, help="default: the platform's (4)")
    parser.add_argument("--cv-splits", type=int, default=None, help="default: the platform's (3)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from retrain_platform import replay
    from retrain_platform.demo_data import make_benchmark_frame

    frame, spec = make_benchmark_frame(rows=args.rows, n_features=args.features, seed=0)
    initial_rows = int(args.rows * replay.DEFAULT_INITIAL_SHARE)
    batch_rows = -(-(args.rows - initial_rows) // args.batches)
    plan = replay.plan_replay(
        frame,
        label=spec["label_column"],
        timestamp=spec["timestamp_column"],
        id_column=spec["id_column"],
        batch=str(batch_rows),
        initial=str(initial_rows),
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-replay-"))
    search = {"search_iterations": args.search_iterations, "cv_splits": args.cv_splits}
    search = {key: value for key, value in search.items() if value is not None}
    print(
        f"rows={args.rows:,} features={args.features} first window={len(plan.initial):,} rows, "
        f"{len(plan.batches)} batches of {batch_rows} rows; cores={os.cpu_count()}; out={out}",
        flush=True,
    )
    started = time.perf_counter()
    results = replay.replay(
        plan,
        list(replay.POLICIES),
        out,
        replay.PolicyOptions(every=5, search=search or None),
        workers=args.workers,
        on_progress=lambda p, d, n, e: d == n and print(f"  {p:<12} done in {e:5.0f} s", flush=True),
    )
    wall = time.perf_counter() - started
    print(replay.summary_table(results).to_markdown(index=False))
    for result in results:
        print(f"  {result.policy:<12} own time {result.elapsed_s:6.1f} s" + (f"  ERROR {result.error}" if result.error else ""))
    print(f"six policies, {len(plan.batches)} batches each: {wall:6.1f} s wall (target < 600 s)", flush=True)

    from threadpoolctl import threadpool_limits

    from retrain_platform.modelling import SearchSettings, make_features, train_candidates
    from retrain_platform.spec import complete_spec, parse_spec

    customer_spec = complete_spec(parse_spec(spec), frame)
    history = frame.sort_values(customer_spec.timestamp_column).reset_index(drop=True)
    settings = SearchSettings(n_jobs=1, n_iter=args.search_iterations or 4, n_splits=args.cv_splits or 3)
    refits = range(1, len(plan.batches))
    # The platform searches hyper-parameters at every 8th training and refits its choice in between: time both
    # kinds at five points spread over the replay (the windows grow linearly) and scale to all trainings.
    sampled = sorted({refits[int(i * (len(refits) - 1) / 4)] for i in range(5)})
    searched = refitted = 0.0
    with threadpool_limits(1):
        for number in sampled:
            features = make_features(history.iloc[: initial_rows + number * batch_rows], customer_spec)
            started = time.perf_counter()
            full = train_candidates(features, settings)
            searched += time.perf_counter() - started
            known = {full.winner.family: full.winner.best_params}
            started = time.perf_counter()
            train_candidates(features, replace(settings, known_params=known))
            refitted += time.perf_counter() - started
    trainings = len(refits)
    bare = (searched / len(sampled)) * trainings / 8 + (refitted / len(sampled)) * trainings * 7 / 8
    print(
        f"bare scikit-learn, `always` ({trainings} trainings: a search at every 8th, refits between; 1 core, "
        f"from {len(sampled)} timed of each): {bare:6.1f} s (search {searched / len(sampled):.1f} s, "
        f"refit {refitted / len(sampled):.1f} s each)"
    )


if __name__ == "__main__":
    main()
