"""Property-based tests of what a user's file goes through first: onboarding's validation and spec inference,
and a later batch's conformance to the spec. Over generated files (odd column names, mixed types, nulls,
infinities, duplicate or missing ids, empty files), each either passes with its invariants kept or is refused
with one line that names the rule; never a library's own text, a numpy repr or a traceback."""

from __future__ import annotations

import math
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrain_platform.ingest import IngestError, conform, read_source
from retrain_platform.onboarding import OnboardingError, OnboardingRequest, prepare

# Names as real exports write them: spaces, dashes, dots, accents, currency signs, digits first.
NAME_CHARACTERS = string.ascii_letters + string.digits + " -._éèàüçß€%()"
names = st.text(alphabet=NAME_CHARACTERS, min_size=1, max_size=12).filter(lambda name: name.strip() == name and name)

# What a messy export puts in a column besides its values.
ODD_CELLS = [None, float("inf"), float("-inf"), "", "n/a", "abc", "1,5", "€3", "true", 0]

LIBRARY_TEXT = ("Traceback", "validation error for", "np.int", "np.float", "KeyError", "ValueError:", "Input X")


def _one_line_refusal(error: Exception) -> None:
    message = str(error)
    assert message and "\n" not in message, message
    assert not any(text in message for text in LIBRARY_TEXT), message


@st.composite
def histories(draw) -> tuple[pd.DataFrame, dict]:
    """A history file: the values come from a seeded generator (hypothesis chooses the seed, the shape and
    how much odd content goes in), so that files of hundreds of rows stay cheap to draw."""
    rows = draw(st.one_of(st.integers(0, 30), st.integers(200, 400)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    feature_names = draw(st.lists(names, min_size=1, max_size=4, unique_by=str.casefold))
    columns: dict[str, list] = {}
    for name in feature_names:
        kind = draw(st.sampled_from(["numbers", "integers", "categories", "mixed"]))
        odd_share = draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
        if kind == "numbers":
            values = list(rng.normal(size=rows) * 10 ** draw(st.integers(-3, 9)))
        elif kind == "integers":
            values = list(rng.integers(-5, 5, size=rows))
        else:
            values = list(rng.choice(["a", "b", "c d", "é"], size=rows))
        if kind == "mixed" or odd_share:
            for row in np.flatnonzero(rng.random(rows) < (odd_share or 0.3)):
                values[row] = ODD_CELLS[rng.integers(len(ODD_CELLS))]
        columns[name] = values
    start = pd.Timestamp("2023-01-01")
    columns["when"] = [(start + pd.Timedelta(days=day)).date().isoformat() for day in range(rows)]
    labels = list(rng.integers(0, 2, size=rows))
    label_kind = draw(st.sampled_from(["binary", "text", "with gaps", "one class"]))
    if label_kind == "text":
        labels = ["yes" if value else "no" for value in labels]
    elif label_kind == "with gaps":
        labels = [value if keep else None for value, keep in zip(labels, rng.random(rows) < 0.8)]
    elif label_kind == "one class":
        labels = [1] * rows
    columns["target"] = labels
    with_id = draw(st.booleans())
    if with_id:
        ids = [f"c-{row}" for row in range(rows)]
        if rows and draw(st.booleans()):
            ids[int(rng.integers(rows))] = draw(st.sampled_from([ids[0], None]))
        columns["row id"] = ids
    return pd.DataFrame(columns), {"id_column": "row id" if with_id else None}


def _through_a_file(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as a user's CSV file is read back: types are whatever the file's text makes them."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "history.csv"
        frame.to_csv(path, index=False)
        try:
            return read_source(path)
        except IngestError as error:
            _one_line_refusal(error)
            raise


PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(histories())
def test_onboarding_either_keeps_its_invariants_or_refuses_in_one_line(generated):
    frame, options = generated
    try:
        history = _through_a_file(frame)
    except IngestError:
        return
    request = OnboardingRequest(customer="acme", label="target", timestamp="when", id_column=options["id_column"])
    try:
        prepared = prepare(history, request)
    except OnboardingError as error:
        _one_line_refusal(error)
        return

    spec, kept = prepared.spec, prepared.history
    assert len(kept) == len(history)  # nothing dropped on the way
    assert set(spec.feature_names) <= set(history.columns) - {"when", "target", "row id"}
    for name in spec.numeric_features:
        values = kept[name].to_numpy(dtype=float)
        assert not np.isinf(values).any(), name
    if spec.id_column:
        assert kept[spec.id_column].notna().all() and kept[spec.id_column].is_unique
    assert kept[spec.timestamp_column].notna().all()
    assert kept["batch_id"].notna().all()
    assert int(kept[spec.label_column].notna().sum()) >= spec.min_training_rows


@PROPERTY_SETTINGS
@given(histories(), histories())
def test_a_later_batch_either_conforms_to_the_spec_or_is_refused_in_one_line(first, second):
    frame, options = first
    request = OnboardingRequest(customer="acme", label="target", timestamp="when", id_column=options["id_column"])
    try:
        prepared = prepare(_through_a_file(frame), request)
    except (IngestError, OnboardingError):
        return
    spec = prepared.spec
    batch, _ = second
    # The later file has the customer's columns, filled with whatever the second history holds.
    columns = list(batch.columns)
    renamed = {old: new for old, new in zip(columns, [*spec.feature_names, *columns[len(spec.feature_names):]])}
    batch = batch.rename(columns=renamed)
    if spec.id_column and spec.id_column not in batch:
        batch[spec.id_column] = [f"n-{row}" for row in range(len(batch))]
    try:
        conformed = conform(_through_a_file(batch), spec)
    except IngestError as error:
        _one_line_refusal(error)
        return
    for name in spec.numeric_features:
        assert conformed[name].dtype == "float64"
        assert all(math.isnan(v) or isinstance(v, float) for v in conformed[name])
    if spec.id_column:
        assert conformed[spec.id_column].is_unique
