"""Score and measure one very large batch: time per stage, rows per second and peak memory.

    PYTHONPATH=. python benchmarks/bench_monitoring.py [--rows 10000000] [--chunk-rows 250000] [--unlabelled]

Builds a platform home in a temporary folder, trains one binary customer on `--train-rows` rows of
`make_benchmark_frame` with the core functions (no Dagster, no MLflow: `make_features`, `train_candidates`
with a small search, `drift.build_baseline`), keeps the best model as the champion and the best of another
family as the challenger, and writes a batch of `--rows` rows into the DuckDB landing table, generated and
written `--write-rows` rows at a time (rows drawn from a pool of the same distribution as the training
data, with fresh ids and timestamps), so generation stays bounded too.

Then it runs, each in its own fresh process so that each peak is its own (ru_maxrss never goes down):

- `idle`: import the platform and load the two models and the baseline (the floor of the other two);
- `score`: `monitoring.score_batch` (champion and challenger) with `--chunk-rows`;
- `measure`: `monitoring.measure_batch` (drift of every feature and of the champion's score, the label-free
  estimate, the realized metrics of both models on the labelled rows) with `--chunk-rows`;
- `query`: only the chunked read `monitoring.batch_rows` (the same DuckDB query), to tell the query's
  memory from the rest.

Prints wall time, rows/s and peak RSS (resource.getrusage(RUSAGE_SELF).ru_maxrss) per stage. The target is
a peak under 1.5 GB for scoring and for drift on 10,000,000 rows.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

BUDGET_MB = 1536
BATCH_ID = "bench"


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _proc_status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def current_rss_mb() -> float:
    return _proc_status_mb("VmRSS")


def high_water_mb() -> float:
    """Linux's own peak RSS of this process image (VmHWM): unlike ru_maxrss, it starts afresh at exec."""
    return _proc_status_mb("VmHWM")


# ---------------------------------------------------------------------------------------------------
# Preparation: train, baseline, landing table


def prepare(home_dir: Path, rows: int, train_rows: int, write_rows: int, labelled: bool, seed: int) -> dict:
    import numpy as np
    import pandas as pd

    from retrain_platform import drift, monitoring
    from retrain_platform.demo_data import HISTORY_END, make_benchmark_frame
    from retrain_platform.ingest import BATCH_COLUMN, HISTORY_BATCH
    from retrain_platform.modelling import SearchSettings, make_features, refit_with_holdout, train_candidates
    from retrain_platform.settings import Home
    from retrain_platform.spec import complete_spec, parse_spec
    from retrain_platform.warehouse import Warehouse, duckdb_connection_factory, quote

    home = Home(home_dir).ensure()
    warehouse = Warehouse(duckdb_connection_factory(str(home.warehouse_path)), "duckdb")
    pool_rows = min(max(rows, 1), 200_000)
    frame, spec_data = make_benchmark_frame(rows=train_rows + pool_rows, n_features=20, seed=seed)
    # make_benchmark_frame's rows are in time order: the first train_rows are the history, the rest a pool
    # of the same distribution the batch is drawn from.
    history, pool = frame.iloc[:train_rows].reset_index(drop=True), frame.iloc[train_rows:].reset_index(drop=True)
    del frame
    spec = complete_spec(parse_spec(spec_data), history)

    started = time.perf_counter()
    features = make_features(history, spec)
    training = train_candidates(features, SearchSettings(n_iter=2, n_splits=2, max_search_rows=20_000))
    # Two distinct models to score with, as production has: the winner as judged, and as it serves (refit
    # with the holdout rows).
    champion, (challenger, _) = training.model, refit_with_holdout(features, training)
    family = training.winner.family
    train_seconds = time.perf_counter() - started
    predictions, kind = monitoring.baseline_predictions(champion, features.X_train, spec.task)
    baseline = drift.build_baseline(
        features.X_train,
        spec.kinds,
        predictions=predictions,
        prediction_kind=kind,
        labels=features.y_train.astype(str),
        label_kind="categorical",
    )
    (home.root / "spec.json").write_text(spec.model_dump_json())
    (home.root / "baseline.json").write_text(baseline.to_json())
    with open(home.root / "models.pkl", "wb") as handle:
        pickle.dump(
            {
                "champion": (f"1 ({family})", champion),
                "challenger": (f"2 ({family}, refit with the holdout)", challenger),
            },
            handle,
        )

    warehouse.execute(f"drop table if exists {quote(spec.landing_table)}")
    warehouse.write(spec.landing_table, history.assign(**{BATCH_COLUMN: HISTORY_BATCH}))

    # The batch: `rows` rows drawn from the pool, written `write_rows` at a time.
    rng = np.random.default_rng([seed, 7])
    start = HISTORY_END.value // 10**9
    week = 7 * 24 * 3600
    written = 0
    started = time.perf_counter()
    while written < rows:
        n = min(write_rows, rows - written)
        chunk = pool.iloc[rng.integers(0, len(pool), n)].reset_index(drop=True)
        chunk[spec.id_column] = np.arange(10_000_000_000 + written, 10_000_000_000 + written + n, dtype=np.int64)
        seconds = start + written * week // rows + np.sort(rng.integers(0, max(1, n * week // rows), n))
        chunk[spec.timestamp_column] = pd.to_datetime(seconds, unit="s")
        if not labelled:
            chunk[spec.label_column] = pd.Series(pd.NA, index=chunk.index, dtype="Int64")
        warehouse.write(spec.landing_table, chunk.assign(**{BATCH_COLUMN: BATCH_ID}))
        written += n
        del chunk
    write_seconds = time.perf_counter() - started
    size_mb = home.warehouse_path.stat().st_size / 2**20
    return {
        "train_seconds": train_seconds,
        "write_seconds": write_seconds,
        "champion": family,
        "challenger": f"{family}, refit with the holdout",
        "cv": {c.family: round(c.cv_score, 4) for c in training.candidates},
        "baseline_kb": len(baseline.to_json()) / 1024,
        "warehouse_mb": size_mb,
        "peak_mb": peak_rss_mb(),
        "pool_rows": pool_rows,
    }


# ---------------------------------------------------------------------------------------------------
# Stages, each in a fresh process


def _load(home_dir: Path):
    from retrain_platform import drift
    from retrain_platform.settings import Home
    from retrain_platform.spec import CustomerSpec
    from retrain_platform.warehouse import Warehouse, duckdb_connection_factory

    home = Home(home_dir)
    warehouse = Warehouse(duckdb_connection_factory(str(home.warehouse_path)), "duckdb")
    spec = CustomerSpec.model_validate_json((home.root / "spec.json").read_text())
    baseline = drift.Baseline.from_json((home.root / "baseline.json").read_text())
    with open(home.root / "models.pkl", "rb") as handle:
        models = pickle.load(handle)
    return warehouse, spec, baseline, models


def run_stage(queue, stage: str, home_dir: str, chunk_rows: int) -> None:
    from retrain_platform import monitoring

    warehouse, spec, baseline, models = _load(Path(home_dir))
    floor = peak_rss_mb()
    started = time.perf_counter()
    out: dict = {}
    if stage == "score":
        scored = monitoring.score_batch(warehouse, spec, BATCH_ID, models, chunk_rows=chunk_rows)
        out = {"rows": scored.rows, "labelled": scored.labelled_rows, "mean_score": scored.mean_score}
        stored = warehouse.query(
            f'select "model_role", count(*) as n from "{monitoring.PREDICTIONS_TABLE}" group by 1 order by 1'
        )
        out["stored"] = dict(zip(stored["model_role"], stored["n"].astype(int)))
    elif stage == "measure":
        report = monitoring.measure_batch(warehouse, spec, BATCH_ID, baseline, models, chunk_rows=chunk_rows)
        out = {
            "rows": report.rows,
            "labelled": report.labelled_rows,
            "drifted": report.drift.drifted_columns,
            "prediction_drifted": bool(report.drift.prediction_drift["drifted"]),
            "estimated_roc_auc": report.estimated.get("roc_auc"),
            "realized_roc_auc": {role: m.get("roc_auc") for role, m in report.realized.items()},
        }
    elif stage == "query":
        rows = 0
        for chunk in monitoring.batch_rows(warehouse, spec, BATCH_ID, chunk_rows):
            rows += len(chunk)
        out = {"rows": rows}
    out.update(
        seconds=time.perf_counter() - started,
        peak_mb=peak_rss_mb(),
        hwm_mb=high_water_mb(),
        floor_mb=floor,
        end_mb=current_rss_mb(),
    )
    queue.put(out)


def run_prepare(queue, *args) -> None:
    result = prepare(*args)
    # The search's joblib workers idle for 300 s before they exit, and this process would wait for them.
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    queue.put(result)


def in_fresh_process(target, *args) -> dict:
    """Run `target(queue, *args)` in a new interpreter. The parent stays small (it imports nothing heavy):
    a child's ru_maxrss starts at the RSS of the process it was forked from, so a big parent would
    inflate every child's figure."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(queue, *args))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:1]} exited with {process.exitcode}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in the batch (default 10,000,000)")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="rows per chunk when scoring and measuring")
    parser.add_argument("--write-rows", type=int, default=500_000, help="rows generated and written at a time")
    parser.add_argument("--train-rows", type=int, default=20_000, help="rows of history the models train on")
    parser.add_argument("--unlabelled", action="store_true", help="a batch whose labels have not arrived")
    parser.add_argument("--stages", default="idle,score,measure,query", help="comma-separated stages to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", help="platform home to use (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    temporary = args.home is None
    home_dir = Path(args.home or tempfile.mkdtemp(prefix="bench-monitoring-")).resolve()
    print(
        f"batch of {args.rows:,} rows ({'unlabelled' if args.unlabelled else 'labelled'}), chunks of "
        f"{args.chunk_rows:,}, trained on {args.train_rows:,} rows, {os.cpu_count()} cores; home {home_dir}",
        flush=True,
    )
    try:
        started = time.perf_counter()
        prepared = in_fresh_process(
            run_prepare, home_dir, args.rows, args.train_rows, args.write_rows, not args.unlabelled, args.seed
        )
        print(
            f"prepare: trained in {prepared['train_seconds']:.1f} s (champion {prepared['champion']}, challenger "
            f"{prepared['challenger']}, cv {json.dumps(prepared['cv'])}); baseline {prepared['baseline_kb']:.0f} KB",
            flush=True,
        )
        print(
            f"write:   {args.rows:,} rows in {prepared['write_seconds']:.1f} s "
            f"({args.rows / prepared['write_seconds']:,.0f} rows/s); warehouse file "
            f"{prepared['warehouse_mb']:,.0f} MB; peak RSS of the preparing process {prepared['peak_mb']:,.0f} MB "
            f"(total {time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        results = {}
        for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
            result = in_fresh_process(run_stage, stage, str(home_dir), args.chunk_rows)
            results[stage] = result
            rate = result.get("rows", 0) / result["seconds"] if result["seconds"] > 0 and stage != "idle" else None
            line = (
                f"{stage:<8} {result['seconds']:7.1f} s"
                + (f"  {rate:>10,.0f} rows/s" if rate else " " * 18)
                + f"  peak RSS {result['peak_mb']:6,.0f} MB (VmHWM {result['hwm_mb']:,.0f} MB; after loading "
                f"{result['floor_mb']:,.0f} MB; at the end {result['end_mb']:,.0f} MB)"
            )
            print(line, flush=True)
            figures = ("seconds", "peak_mb", "hwm_mb", "floor_mb", "end_mb")
            details = {k: v for k, v in result.items() if k not in figures}
            if details:
                print(f"         {json.dumps(details, default=str)}", flush=True)
        for stage in ("score", "measure"):
            if stage in results:
                peak = results[stage]["peak_mb"]
                verdict = "under" if peak < BUDGET_MB else "OVER"
                print(f"{stage}: peak {peak:,.0f} MB, {verdict} the {BUDGET_MB:,} MB budget")
    finally:
        if temporary:
            shutil.rmtree(home_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
