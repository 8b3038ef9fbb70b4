"""The canary's verdict: online answers of the champion's and the challenger's arms judged on late labels."""

from __future__ import annotations

import json
from contextlib import contextmanager

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from retrain_platform import alerts, canary, ledger
from retrain_platform import customers as customer_store
from retrain_platform.canary import CanaryVerdict
from retrain_platform.defs.automation import canary_sensor
from retrain_platform.registry import CHALLENGER, CHAMPION, LoggedModel
from retrain_platform.serving import CHALLENGER_ARM, CHAMPION_ARM, ONLINE_PREDICTIONS_TABLE
from retrain_platform.spec import class_value, parse_spec
from retrain_platform.warehouse import Warehouse, duckdb_connection_factory
from retrain_platform_tests.conftest import cli

PREDICTED_AT = pd.Timestamp("2026-11-20 12:00").as_unit("ns")


@pytest.fixture
def db(tmp_path) -> Warehouse:
    return Warehouse(duckdb_connection_factory(str(tmp_path / "warehouse.duckdb")), "duckdb")


@pytest.fixture
def spec():
    return parse_spec(
        {
            "customer": "acme",
            "landing_table": "landing_acme",
            "timestamp_column": "ts",
            "label_column": "churned",
            "id_column": "account",
            "label_values": [0, 1],
            "features": [{"name": "x", "kind": "numeric"}],
            "task": "binary",
            "primary_metric": "roc_auc",
            "canary_fraction": 0.5,
        }
    )


def separating_scores(labels: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Positive-class probabilities that separate the labels more the larger `strength` is (0: not at all)."""
    return 1.0 / (1.0 + np.exp(-(strength * (2 * labels - 1) + rng.normal(size=len(labels)))))


def arm_rows(arm: str, version: str, ids, scores, threshold: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer": "acme",
            "row_id": [str(i) for i in ids],
            "arm": arm,
            "model_version": version,
            "prediction": [str(int(s >= threshold)) for s in scores],
            "score": np.asarray(scores, dtype=float),
            "predicted_at": PREDICTED_AT,
        }
    )


def store(db: Warehouse, ids, labels, *answers: pd.DataFrame) -> None:
    """The landing rows (integer ids, as a file types them; None is a row still unlabelled) and the online log."""
    landing = pd.DataFrame(
        {"account": np.asarray(ids, dtype=np.int64), "ts": PREDICTED_AT, "x": 0.0,
         "churned": pd.array(labels, dtype="Int64")}
    )  # fmt: skip
    db.write("landing_acme", landing)
    for frame in answers:
        db.write(ONLINE_PREDICTIONS_TABLE, frame)


def two_arms(db: Warehouse, rows: int, champion_strength: float, challenger_strength: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=2 * rows)
    ids = np.arange(2 * rows)
    champion = arm_rows(CHAMPION_ARM, "1", ids[:rows], separating_scores(labels[:rows], champion_strength, rng))
    challenger = arm_rows(CHALLENGER_ARM, "2", ids[rows:], separating_scores(labels[rows:], challenger_strength, rng))
    store(db, ids, labels, champion, challenger)


def test_a_clearly_better_challenger_arm_is_significant(db, spec):
    two_arms(db, 300, champion_strength=0.3, challenger_strength=2.5)
    comparison = canary.compare_arms(db, spec, "1", "2")
    assert comparison.verdict == CanaryVerdict.BETTER and comparison.significant
    assert comparison.metric == "roc_auc"
    assert (comparison.champion.labelled_rows, comparison.challenger.labelled_rows) == (300, 300)
    assert (comparison.champion.answered_rows, comparison.challenger.answered_rows) == (300, 300)
    assert comparison.challenger.metric_value > comparison.champion.metric_value + 0.2
    assert comparison.difference.low > comparison.required_gain == 0.0
    assert "lies above 0" in comparison.reason
    as_json = json.loads(json.dumps(comparison.to_dict()))
    assert as_json["verdict"] == "challenger better" and as_json["significant"] is True
    assert as_json["arms"]["challenger"]["model_version"] == "2"


def test_the_gain_the_spec_requires_must_lie_below_the_whole_interval(db, spec):
    two_arms(db, 300, champion_strength=0.3, challenger_strength=2.5)
    strict = parse_spec({**spec.model_dump(), "thresholds": {"min_absolute_change": 0.9}})
    comparison = canary.compare_arms(db, strict, "1", "2")
    assert comparison.verdict == CanaryVerdict.NOT_SIGNIFICANT and comparison.required_gain == 0.9
    assert "the required gain of 0.9000" in comparison.reason


def test_equal_arms_are_not_significant(db, spec):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=300)
    scores = separating_scores(labels, 1.0, rng)
    # The same answers on rows of their own: the arms differ by nothing but their ids.
    champion = arm_rows(CHAMPION_ARM, "1", range(300), scores)
    challenger = arm_rows(CHALLENGER_ARM, "2", range(300, 600), scores)
    store(db, range(600), np.concatenate([labels, labels]), champion, challenger)
    comparison = canary.compare_arms(db, spec, "1", "2")
    assert comparison.verdict == CanaryVerdict.NOT_SIGNIFICANT and not comparison.significant
    assert comparison.champion.metric_value == pytest.approx(comparison.challenger.metric_value)
    assert comparison.difference.low < 0 < comparison.difference.high


def test_a_clearly_worse_challenger_says_so(db, spec):
    two_arms(db, 300, champion_strength=2.5, challenger_strength=0.0)
    comparison = canary.compare_arms(db, spec, "1", "2")
    assert comparison.verdict == CanaryVerdict.WORSE and not comparison.significant


def test_too_few_labels_refuses_to_judge(db, spec):
    rng = np.random.default_rng(2)
    known = rng.integers(0, 2, size=400)
    scores = separating_scores(known, 3.0, rng)
    labels = known.astype(object)
    labels[250:] = None  # the challenger's rows: 50 labelled, 150 still waiting for theirs
    champion = arm_rows(CHAMPION_ARM, "1", range(200), scores[:200])
    challenger = arm_rows(CHALLENGER_ARM, "2", range(200, 400), scores[200:])
    store(db, range(400), list(labels), champion, challenger)
    comparison = canary.compare_arms(db, spec, "1", "2")
    assert comparison.verdict == CanaryVerdict.TOO_FEW_LABELS and comparison.difference is None
    assert (comparison.champion.labelled_rows, comparison.challenger.labelled_rows) == (200, 50)
    assert comparison.challenger.answered_rows == 200
    assert "challenger 50 < 100 per arm" in comparison.reason
    assert comparison.min_labelled_rows == max(spec.automation.min_labelled_rows, spec.thresholds.min_holdout_rows)


def test_only_the_two_versions_count_and_a_row_answered_twice_counts_once(db, spec):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=700)
    good = separating_scores(labels, 2.5, rng)
    weak = separating_scores(labels, 0.3, rng)
    champion = arm_rows(CHAMPION_ARM, "1", range(300), weak[:300])
    challenger = arm_rows(CHALLENGER_ARM, "2", range(300, 600), good[300:600])
    # An older champion's answers, and the same challenger rows answered again: neither adds evidence.
    older = arm_rows(CHAMPION_ARM, "0", range(600, 700), good[600:])
    again = challenger.assign(predicted_at=PREDICTED_AT + pd.Timedelta(hours=1))
    store(db, range(700), labels, champion, challenger, older, again)
    comparison = canary.compare_arms(db, spec, "1", "2")
    assert (comparison.champion.labelled_rows, comparison.challenger.labelled_rows) == (300, 300)
    assert comparison.significant


def test_no_challenger_apart_from_the_champion_is_no_canary(db, spec):
    two_arms(db, 150, champion_strength=1.0, challenger_strength=1.0)
    for champion, challenger in (("1", "1"), ("1", None)):
        comparison = canary.compare_arms(db, spec, champion, challenger)
        assert comparison.verdict == CanaryVerdict.NO_CANARY and "nothing is in canary" in comparison.reason


# ---------------------------------------------------------------------------------------------------
# The command, on a trained customer


@contextmanager
def in_canary(trained_customer, copy_platform, root, **spec_changes):
    """A copy of trained lumen-streaming (champion version 1) with version 2, registered from the same model, as
    its challenger in a canary, and online answers for labelled rows of its landing table: version 2's arm
    answered every row right, version 1's arm at random."""
    lumen = trained_customer("lumen-streaming")
    with copy_platform(lumen, root) as platform:
        registry = platform.registry
        spec = parse_spec({**lumen.spec.model_dump(), "canary_fraction": 0.5, **spec_changes})
        customer_store.save_spec(platform.warehouse, spec)
        first = registry.client.get_model_version(spec.model_name, "1")
        second = registry.register(spec.model_name, LoggedModel(first.run_id, first.source), tags=dict(first.tags))
        registry.set_alias(spec.model_name, CHALLENGER, second)
        landing = platform.landing(spec)
        labelled = landing[landing[spec.label_column].notna()].head(400)
        ids = labelled[spec.id_column].astype(str).to_numpy()
        positive = class_value(spec.label_values[1])
        truth = np.array([float(class_value(label) == positive) for label in labelled[spec.label_column]])
        rng = np.random.default_rng(0)
        answers = []
        for arm, version, rows, scores in (
            (CHAMPION_ARM, "1", slice(0, 200), rng.uniform(size=200)),
            (CHALLENGER_ARM, str(second), slice(200, 400), np.clip(truth[200:400], 0.05, 0.95)),
        ):
            answers.append(
                pd.DataFrame(
                    {
                        "customer": spec.customer,
                        "row_id": ids[rows],
                        "arm": arm,
                        "model_version": version,
                        "prediction": [str(class_value(spec.label_values[int(s >= 0.5)])) for s in scores],
                        "score": scores,
                        "predicted_at": PREDICTED_AT,
                    }
                )
            )
        platform.warehouse.write(ONLINE_PREDICTIONS_TABLE, pd.concat(answers, ignore_index=True))
        yield platform, spec


@pytest.fixture(scope="module")
def canaried(trained_customer, copy_platform, tmp_path_factory):
    root = tmp_path_factory.mktemp("canary")
    with in_canary(trained_customer, copy_platform, root) as (platform, spec):
        yield platform, spec, root


@pytest.mark.slow
@pytest.mark.e2e  # command-line processes end to end: the end-to-end lane
def test_canary_command_prints_the_comparison_and_promotes_only_with_promote(canaried):
    platform, spec, root = canaried
    home = platform.home.root

    shown = cli("canary", spec.customer, "--json", home=home, cwd=root)
    assert shown.returncode == 0, shown.stderr
    comparison = json.loads(shown.stdout)
    assert comparison["verdict"] == "challenger better" and comparison["arms"]["challenger"]["labelled_rows"] == 200
    assert platform.registry.alias_version(spec.model_name, CHAMPION) == "1"

    table = cli("canary", spec.customer, home=home, cwd=root)
    assert table.returncode == 0, table.stderr
    assert "verdict: challenger better" in table.stdout and f"canary {spec.customer} --promote" in table.stdout

    promoted = cli("canary", spec.customer, "--promote", home=home, cwd=root)
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted: champion 1 -> 2" in promoted.stdout
    assert platform.registry.alias_version(spec.model_name, CHAMPION) == "2"
    move = ledger.history(platform.warehouse, spec.customer).iloc[-1]
    assert (move["action"], move["from_version"], move["to_version"]) == ("approve", "1", "2")
    assert move["trigger"].startswith("canary: cli:") and move["reasons"].startswith("canary: ")

    # The challenger is the champion now: nothing is in canary, and --promote changes nothing.
    moves = len(ledger.history(platform.warehouse, spec.customer))
    again = cli("canary", spec.customer, "--promote", home=home, cwd=root)
    assert again.returncode == 0, again.stderr
    assert "verdict: no canary" in again.stdout and "not promoted: nothing changed" in again.stdout
    assert len(ledger.history(platform.warehouse, spec.customer)) == moves
    assert platform.registry.alias_version(spec.model_name, CHAMPION) == "2"


def tick_canary_sensor(platform, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=platform.instance, cursor=cursor, resources=platform.resources)
    result = canary_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


@pytest.mark.slow
def test_canary_sensor_promotes_an_auto_mode_challenger_once(trained_customer, copy_platform, tmp_path):
    with in_canary(trained_customer, copy_platform, tmp_path / "platform", mode="auto") as (platform, spec):
        result = tick_canary_sensor(platform)
        (request,) = result.run_requests
        assert request.run_key == f"canary:{spec.customer}:v2-vs-v1"
        assert request.tags["retrain/trigger"] == "canary"
        run = platform.defs.resolve_job_def("promote_canary_model").execute_in_process(
            run_config=request.run_config, instance=platform.instance, tags=request.tags, raise_on_error=False
        )
        assert run.success
        assert platform.registry.alias_version(spec.model_name, CHAMPION) == "2"
        move = ledger.history(platform.warehouse, spec.customer).iloc[-1]
        assert (move["action"], move["to_version"], move["trigger"]) == ("approve", "2", "canary: canary_sensor")
        assert move["dagster_run_id"] == run.run_id

        again = tick_canary_sensor(platform, result.cursor)
        assert again.run_requests == [] and "no canary" in str(getattr(again.skip_reason, "skip_message", again.skip_reason))


@pytest.mark.slow
def test_canary_sensor_alerts_an_approve_mode_customer_instead(trained_customer, copy_platform, tmp_path):
    with in_canary(trained_customer, copy_platform, tmp_path / "platform", mode="approve") as (platform, spec):
        result = tick_canary_sensor(platform)
        assert result.run_requests == []
        assert platform.registry.alias_version(spec.model_name, CHAMPION) == "1"
        sent = platform.warehouse.query('select * from "alerts" where "kind" = ?', [alerts.CHALLENGER_READY])
        (message,) = sent["message"]
        assert message.startswith("canary: version 2 is significantly better online than champion 1")
        assert f"canary {spec.customer} --promote" in message
        tick_canary_sensor(platform, result.cursor)
        assert len(platform.warehouse.query('select * from "alerts" where "kind" = ?', [alerts.CHALLENGER_READY])) == 1
