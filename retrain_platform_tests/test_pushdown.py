"""Counts the warehouse makes (GROUP BY, COUNT) agree exactly with the Python drift counters, which stay
the reference, on DuckDB and on Snowflake (fakesnow).

The numeric data puts values on every bin edge, next to it by one double, and where a double rounds to the
edge's float32 (the counters compare float32 values), with NULLs, NaN and infinities; the column names hold
spaces, accents and dashes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain_platform import drift, monitoring
from retrain_platform.ingest import BATCH_COLUMN
from retrain_platform_tests.test_warehouse import warehouse  # noqa: F401  (the DuckDB and fakesnow fixture)

pytestmark = pytest.mark.filterwarnings("ignore:Arrow output on a DB-API result:UserWarning")

TABLE = "landing_pushdown"
NUMBER = "température moyenne"
INTEGER = "wind-speed km"
CATEGORY = "type de ciel"
FLAG = "a-flag"


def reference(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            NUMBER: rng.normal(10, 3, 400),
            INTEGER: rng.integers(0, 30, 400),
            CATEGORY: rng.choice(["clair", "nuageux", "pluie"], 400),
            FLAG: rng.choice([True, False], 400),
        }
    )


def on_and_around(edges: np.ndarray) -> np.ndarray:
    """Each float32 edge as a double, one double either side of it, and the doubles either side of the midpoint
    to the float32 below (which round to different float32s)."""
    values = []
    for edge in edges.astype(np.float64):
        below = float(np.nextafter(np.float32(edge), np.float32(-np.inf)))
        midpoint = (below + edge) / 2
        values += [edge, np.nextafter(edge, -np.inf), np.nextafter(edge, np.inf), midpoint]
        values += [np.nextafter(midpoint, -np.inf), np.nextafter(midpoint, np.inf)]
    return np.asarray(values)


def batch(baseline: drift.Baseline, rng: np.random.Generator) -> pd.DataFrame:
    edges = baseline.features[NUMBER].edges
    special = np.concatenate([on_and_around(edges), [np.nan, np.inf, -np.inf, 3.5e38, -1e300]])
    numbers = np.concatenate([rng.normal(11, 4, 300), special])
    rows = len(numbers)
    integers = pd.array(rng.integers(0, 40, rows), dtype="Int64")
    integers[::17] = pd.NA
    categories = pd.Series(rng.choice(["clair", "nuageux", "brouillard", "pluie", "ciel d'été"], rows), dtype=object)
    categories[::11] = None
    numbers[::13] = np.nan
    return pd.DataFrame(
        {NUMBER: numbers, INTEGER: integers, CATEGORY: categories, FLAG: rng.choice([True, False], rows)}
    )


@pytest.fixture
def stored(warehouse):
    """A reference, its baseline, and two batches in one landing table: counts must see only their batch."""
    rng = np.random.default_rng(7)
    baseline = drift.build_baseline(
        reference(rng), {NUMBER: "numeric", INTEGER: "numeric", CATEGORY: "categorical", FLAG: "categorical"}
    )
    first, second = batch(baseline, rng), batch(baseline, rng)
    warehouse.write(TABLE, pd.concat([first.assign(**{BATCH_COLUMN: "b1"}), second.assign(**{BATCH_COLUMN: "b2"})]))
    return warehouse, baseline, first


def python_counter(baseline: drift.Baseline, column: str, frame: pd.DataFrame):
    counter = drift._counter(baseline.features[column])
    counter.add(frame[column])
    return counter


@pytest.mark.parametrize("column", [NUMBER, INTEGER])
def test_binned_counts_agree_with_the_python_counter(stored, column):
    warehouse, baseline, first = stored
    where, params = monitoring.batch_filter("b1")
    counted = monitoring.binned_counts(warehouse, TABLE, column, baseline.features[column].edges, where, params)
    expected = python_counter(baseline, column, first)

    assert counted.counts.tolist() == expected.counts.tolist()
    assert counted.n_missing == expected.n_missing
    assert counted.sums == pytest.approx(expected.sums, rel=1e-6)
    if column == NUMBER:
        # The edge cases are there: NULL/NaN/inf and the float32 overflow count as missing.
        assert expected.n_missing == int(first[NUMBER].isna().sum()) + 3


def test_values_on_the_edges_land_in_the_bin_the_edge_opens(stored):
    warehouse, baseline, _ = stored
    edges = baseline.features[NUMBER].edges
    on_edges = pd.DataFrame({NUMBER: edges.astype(np.float64), BATCH_COLUMN: "edges"})
    warehouse.write(TABLE, on_edges)
    where, params = monitoring.batch_filter("edges")
    counted = monitoring.binned_counts(warehouse, TABLE, NUMBER, edges, where, params)
    assert counted.counts.tolist() == [0] + [1] * len(edges)


@pytest.mark.parametrize("column", [CATEGORY, FLAG])
def test_category_counts_agree_with_the_python_counter(stored, column):
    warehouse, _, first = stored
    where, params = monitoring.batch_filter("b1")
    counts, n_missing = monitoring.category_counts(warehouse, TABLE, column, where, params)
    expected, expected_missing = drift._category_counts(first[column])

    assert counts.sort_index().to_dict() == expected.sort_index().to_dict()
    assert n_missing == expected_missing
    if column == CATEGORY:
        assert n_missing == int(first[CATEGORY].isna().sum()) > 0
        assert "ciel d'été" in counts.index
    else:
        assert set(counts.index) == {"True", "False"}


def test_row_count_counts_one_batch(stored):
    warehouse, _, first = stored
    where, params = monitoring.batch_filter("b1")
    assert monitoring.row_count(warehouse, TABLE, where, params) == len(first)
    assert monitoring.row_count(warehouse, TABLE) == 2 * len(first)


def test_labelled_row_counts_for_a_page_agree_with_the_single_customer_readers(warehouse):
    from retrain_platform import evidence
    from retrain_platform.spec import parse_spec

    day = pd.Timestamp("2026-10-01")
    rng = np.random.default_rng(3)
    specs, snapshots = [], {}
    for customer, id_column in (("acme", "n° client"), ("globex-eu", None)):
        spec = parse_spec(
            {
                "customer": customer,
                "landing_table": f"landing_{customer.replace('-', '_')}",
                "timestamp_column": "horodatage client",
                "label_column": "résultat",
                "id_column": id_column,
                "features": [{"name": NUMBER, "kind": "numeric"}],
                "task": "binary",
                "training_window_days": 30,
            }
        )
        times = day + pd.to_timedelta(np.arange(60) - 40, unit="D")  # the first ten are outside the window
        labels = pd.array(rng.integers(0, 2, 60), dtype="Int64")
        labels[::7] = pd.NA
        landing = pd.DataFrame({"horodatage client": times, NUMBER: rng.normal(size=60), "résultat": labels})
        if id_column:
            landing.insert(0, id_column, range(60))
        warehouse.write(spec.landing_table, landing)
        snapshots[customer] = f"snapshot_{customer.replace('-', '_')}"
        warehouse.write(snapshots[customer], landing.iloc[:35].dropna().assign(customer=customer))
        specs.append(spec)

    since = {"acme": (day + pd.Timedelta(days=10)).to_pydatetime()}
    counts = evidence.labelled_rows(warehouse, specs, snapshots, since=since)
    # Both customers' labels are missing on the same rows (every seventh).
    labelled_times = pd.Series(day + pd.to_timedelta(np.arange(60) - 40, unit="D"))[pd.notna(labels)]
    in_window = labelled_times[labelled_times >= labelled_times.max() - pd.Timedelta(days=30)]
    snapshot_rows = len(landing.iloc[:35].dropna())
    # New: in the window and after the 35 rows the snapshot took from (by id, or by time without ids alike here).
    fresh = int((in_window.index >= 35).sum())
    for customer in ("acme", "globex-eu"):
        assert counts[customer][:3] == (fresh, snapshot_rows, len(in_window))
    assert counts["acme"].since_change == (in_window >= day + pd.Timedelta(days=10)).sum() > 0
    assert counts["globex-eu"].since_change == 0  # no change reported for it
