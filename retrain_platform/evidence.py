"""What the retraining sensors judge, read from the warehouse and the registry for many customers at once.

A sensor tick that asked MLflow and the warehouse about each customer in turn made a round trip (and, on
DuckDB, a file open; on Snowflake, a session) per question and customer: about a second per customer on a
busy machine, far beyond Dagster's 60 s tick limit at 1,000 customers. Each function here answers one question
(champion versions, holdout metrics, drift and metrics per batch, shadow comparisons, the ledger's latest
trainings and champion moves, labelled-row counts) for a whole page of customers in one call; ask about one
customer with a page of one. The decisions over this evidence are in `triggers`. Nothing here knows about Dagster.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

import pandas as pd

from retrain_platform import batches, ledger, monitoring, triggers
from retrain_platform.ingest import BATCH_COLUMN, HISTORY_BATCH, HISTORY_PREFIX
from retrain_platform.registry import ModelRegistry
from retrain_platform.spec import CustomerSpec
from retrain_platform.status import HOLDOUT_ESTIMATED_TAG_PREFIX, HOLDOUT_TAG_PREFIX
from retrain_platform.warehouse import Warehouse, quote

# Model names per MLflow search: the filter is one `name IN (...)` clause.
NAMES_PER_SEARCH = 200


# An onboarded history is a backtest of the model trained on it: evidence only comes from batches that arrived.
def not_history(alias: str = "") -> str:
    column = f'{alias}."batch_id"' if alias else '"batch_id"'
    return f"{column} <> ? and {column} not like ?"


NOT_HISTORY_PARAMS = (HISTORY_BATCH, HISTORY_PREFIX + "%")


def alias_versions(registry: ModelRegistry, model_names: list[str], alias: str) -> dict[str, str | None]:
    """The version each model's `alias` points at (None when it has none, or the model does not exist)."""
    found: dict[str, str | None] = dict.fromkeys(model_names)
    client = registry.client
    for names in _chunks(model_names):
        token = None
        while True:
            page = client.search_registered_models(
                filter_string=f"name IN ({_names(names)})", max_results=len(names), page_token=token
            )
            for model in page:
                version = (model.aliases or {}).get(alias)
                found[model.name] = None if version is None else str(version)
            token = page.token
            if not token:
                break
    return found


def holdout_metrics(
    registry: ModelRegistry, versions: dict[str, str | None], metrics: dict[str, str]
) -> dict[str, tuple[float | None, float | None]]:
    """Per model, what `versions[model]` scored on its training's holdout on `metrics[model]`, and its
    label-free estimate there (`status.holdout_metrics` for many models, from one search of their versions)."""
    wanted = {name: version for name, version in versions.items() if version is not None}
    tags: dict[str, dict[str, str]] = {}
    client = registry.client
    for names in _chunks(list(wanted)):
        for version in client.search_model_versions(filter_string=f"name IN ({_names(names)})"):
            if str(version.version) == wanted.get(version.name):
                tags[version.name] = dict(version.tags or {})
    found = {}
    for name in wanted:
        mine, metric = tags.get(name, {}), metrics[name]
        values = (mine.get(HOLDOUT_TAG_PREFIX + metric), mine.get(HOLDOUT_ESTIMATED_TAG_PREFIX + metric))
        found[name] = tuple(None if value is None else float(value) for value in values)
    return found


def last_trainings(warehouse: Warehouse) -> dict[str, triggers.LastTraining]:
    """Per customer, its latest training of any verdict, from one read of the ledger."""
    return {
        customer: triggers.LastTraining(
            recorded_at=pd.Timestamp(row["recorded_at"]).to_pydatetime(), dagster_run_id=_text(row["dagster_run_id"])
        )
        for customer, row in _latest(warehouse, triggers.TRAINING_ACTIONS).items()
    }


def last_champion_moves(warehouse: Warehouse) -> dict[str, triggers.ChampionMove]:
    """Per customer, the latest move of its champion (promotion, approval or rollback), from one read of the ledger."""
    return {
        customer: triggers.ChampionMove(
            action=str(row["action"]),
            from_version=_text(row["from_version"]),
            to_version=_text(row["champion_after"]),
            recorded_at=pd.Timestamp(row["recorded_at"]).to_pydatetime(),
        )
        for customer, row in _latest(warehouse, triggers.CHAMPION_MOVES).items()
    }


def _latest(warehouse: Warehouse, actions: tuple[str, ...]) -> dict[str, pd.Series]:
    if not warehouse.table_exists(ledger.LEDGER_TABLE):
        return {}
    marks = ", ".join("?" for _ in actions)
    frame = warehouse.query(
        f'select * from {quote(ledger.LEDGER_TABLE)} where "action" in ({marks}) '
        'qualify row_number() over (partition by "customer" order by "recorded_at" desc) = 1',
        list(actions),
    )
    return {str(row["customer"]): row for _, row in frame.iterrows()}


def latest_drift(warehouse: Warehouse, champions: dict[str, str | None], limit: int) -> dict[str, list[triggers.BatchDrift]]:
    """Per customer, the latest `limit` measured batches (by the time their rows describe) that its champion's
    version scored, newest first; one query for every customer."""
    wanted = {customer: str(version) for customer, version in champions.items() if version is not None}
    if not wanted or not warehouse.table_exists(monitoring.DRIFT_BATCHES_TABLE):
        return {customer: [] for customer in wanted}
    marks = ", ".join("?" for _ in wanted)
    frame = warehouse.query(
        f'select * from {quote(monitoring.DRIFT_BATCHES_TABLE)} where "customer" in ({marks}) '
        f"and {not_history()} "
        'qualify row_number() over (partition by "customer", "model_version" '
        f'order by "batch_start" desc, "batch_id" desc) <= {int(limit)}',
        [*wanted, *NOT_HISTORY_PARAMS],
    )
    frame = frame.sort_values(["customer", "batch_start", "batch_id"], ascending=[True, False, False])
    found: dict[str, list[triggers.BatchDrift]] = {customer: [] for customer in wanted}
    for row in frame.itertuples():
        if str(row.model_version) != wanted.get(str(row.customer)):
            continue
        found[str(row.customer)].append(
            triggers.BatchDrift(
                batch_id=str(row.batch_id),
                batch_start=_moment(row.batch_start),
                drift_share=float(row.drift_share),
                dataset_drifted=_true(row.dataset_drifted),
                drifted_columns=str(row.drifted_columns or ""),
                model_version=str(row.model_version),
            )
        )
    return found


def recent_metrics(
    warehouse: Warehouse, champions: dict[str, str | None], metrics: dict[str, str], limit: int
) -> dict[str, list[triggers.BatchMetric]]:
    """Per customer, its champion's metric `metrics[customer]` on the latest `limit` measured batches it scored,
    newest first: realized and estimated; one query for every customer."""
    wanted = {customer: str(version) for customer, version in champions.items() if version is not None}
    tables = (monitoring.METRICS_TABLE, monitoring.DRIFT_BATCHES_TABLE)
    if not wanted or not all(warehouse.table_exists(table) for table in tables):
        return {customer: [] for customer in wanted}
    marks = ", ".join("?" for _ in wanted)
    frame = warehouse.query(
        'select m."customer", m."batch_id", m."model_version", m."metric", m."kind", m."value", m."labelled_rows", '
        f'd."batch_start" from {quote(monitoring.METRICS_TABLE)} m join {quote(monitoring.DRIFT_BATCHES_TABLE)} d '
        'on d."customer" = m."customer" and d."batch_id" = m."batch_id" '
        f'where m."customer" in ({marks}) and m."model_role" = ? and {not_history("m")} '
        'qualify dense_rank() over (partition by m."customer", m."model_version" '
        f'order by d."batch_start" desc, m."batch_id" desc) <= {int(limit)}',
        [*wanted, monitoring.CHAMPION_ROLE, *NOT_HISTORY_PARAMS],
    )
    found: dict[str, list[triggers.BatchMetric]] = {customer: [] for customer in wanted}
    if frame.empty:
        return found
    frame = frame[
        (frame["model_version"].astype(str) == frame["customer"].map(wanted))
        & (frame["metric"] == frame["customer"].map(metrics))
    ]
    frame = frame.sort_values(["customer", "batch_start", "batch_id"], ascending=[True, False, False])
    for (customer, batch), rows in frame.groupby(["customer", "batch_id"], sort=False):
        values = dict(zip(rows["kind"], rows["value"].astype(float)))
        found[str(customer)].append(
            triggers.BatchMetric(
                batch_id=str(batch),
                model_version=wanted[str(customer)],
                metric=metrics[str(customer)],
                realized=values.get("realized"),
                estimated=values.get("estimated"),
                labelled_rows=int(rows["labelled_rows"].iloc[0]),
                batch_start=_moment(rows["batch_start"].iloc[0]),
            )
        )
    return found


def shadow_comparisons(warehouse: Warehouse, metrics: dict[str, str]) -> dict[str, list[triggers.ShadowComparison]]:
    """Per customer, per measured batch, oldest first, the champion's and the previous champion's realized
    metric `metrics[customer]` (scored in shadow on the same rows); one query for every customer."""
    found: dict[str, list[triggers.ShadowComparison]] = {customer: [] for customer in metrics}
    tables = (monitoring.METRICS_TABLE, monitoring.DRIFT_BATCHES_TABLE)
    if not metrics or not all(warehouse.table_exists(table) for table in tables):
        return found
    marks = ", ".join("?" for _ in metrics)
    frame = warehouse.query(
        'select m."customer", m."batch_id", m."metric", m."model_role", m."model_version", m."value", '
        f'm."labelled_rows", d."batch_start" from {quote(monitoring.METRICS_TABLE)} m '
        f'join {quote(monitoring.DRIFT_BATCHES_TABLE)} d on d."customer" = m."customer" and d."batch_id" = m."batch_id" '
        f"""where m."customer" in ({marks}) and m."kind" = 'realized' and m."model_role" in (?, ?) """
        f'and {not_history("m")}',
        [*metrics, monitoring.CHAMPION_ROLE, monitoring.PREVIOUS_CHAMPION_ROLE, *NOT_HISTORY_PARAMS],
    )
    if frame.empty:
        return found
    frame = frame[frame["metric"] == frame["customer"].map(metrics)]
    pairs: dict[str, list] = {}
    for (customer, batch, start), rows in frame.groupby(["customer", "batch_id", "batch_start"], sort=False, dropna=False):
        by_role = {row.model_role: row for row in rows.itertuples()}
        champion, previous = by_role.get(monitoring.CHAMPION_ROLE), by_role.get(monitoring.PREVIOUS_CHAMPION_ROLE)
        if champion is None or previous is None:
            continue
        comparison = triggers.ShadowComparison(
            batch_id=str(batch),
            labelled_rows=int(champion.labelled_rows),
            champion_version=str(champion.model_version),
            champion_value=float(champion.value),
            previous_version=str(previous.model_version),
            previous_value=float(previous.value),
        )
        pairs.setdefault(str(customer), []).append((start, comparison))
    for customer, listed in pairs.items():
        listed.sort(key=lambda pair: (pd.Timestamp.min if pd.isna(pair[0]) else pd.Timestamp(pair[0]), pair[1].batch_id))
        found[customer] = [comparison for _, comparison in listed]
    return found


class LabelledRows(NamedTuple):
    """A customer's labelled rows as a training now would see them."""

    # Not in the last training's snapshot (by id, or after its latest timestamp without an id column), labels
    # people added later to old rows included; a quarantined batch's rows are left out, as a training does.
    fresh: int
    snapshot_rows: int  # in that snapshot
    window_rows: int = 0  # in the training window
    since_change: int = 0  # in the window, at or after the customer's `since` time


def labelled_rows(
    warehouse: Warehouse,
    specs: list[CustomerSpec],
    snapshot_tables: dict[str, str],
    since: dict[str, datetime] | None = None,
) -> dict[str, LabelledRows]:
    """Per customer, the labelled rows a training now would add to its last snapshot, the rows that snapshot
    holds, the rows in its training window and, for customers in `since`, those of the window at or after
    that time; counted in the warehouse in one query over their landing and snapshot tables."""
    since = since or {}
    found = {spec.customer: LabelledRows(0, 0) for spec in specs}
    tables = _existing(warehouse, [t for spec in specs for t in (spec.landing_table, snapshot_tables[spec.customer])])
    states = batches.current_states(warehouse) if specs else pd.DataFrame()
    quarantined: dict[str, list[str]] = {}
    if not states.empty:
        for row in states[states["state"] == batches.BatchState.QUARANTINED].itertuples():
            quarantined.setdefault(str(row.customer), []).append(str(row.batch_id))
    parts, params = [], []
    for spec in specs:
        snapshot = snapshot_tables[spec.customer]
        if spec.landing_table not in tables or snapshot not in tables:
            continue
        landing, timestamp, label = quote(spec.landing_table), quote(spec.timestamp_column), quote(spec.label_column)
        if spec.id_column:
            key = quote(spec.id_column)
            unseen = f'not exists (select 1 from {quote(snapshot)} s where s."customer" = ? and s.{key} = l.{key})'
        else:
            unseen = f'l.{timestamp} > (select max(s.{timestamp}) from {quote(snapshot)} s where s."customer" = ?)'
        kept, left_out = "", quarantined.get(spec.customer, [])
        if left_out:
            column = quote(BATCH_COLUMN)
            kept = f" and (l.{column} is null or l.{column} not in ({', '.join('?' for _ in left_out)}))"
        window = int(spec.training_window_days)
        in_window = (
            f"l.{label} is not null and l.{timestamp} >= "
            f"(select max({timestamp}) from {landing} where {label} is not null) - interval '{window} days'{kept}"
        )
        changed_at = since.get(spec.customer)
        parts.append(
            f'select ? as "customer", (select count(*) from {landing} l where {in_window} and {unseen}) as "fresh", '
            f'(select count(*) from {quote(snapshot)} where "customer" = ?) as "snapshot_rows", '
            f'(select count(*) from {landing} l where {in_window}) as "window_rows", '
            + (f'(select count(*) from {landing} l where {in_window} and l.{timestamp} >= ?)' if changed_at else "0")
            + ' as "since_change"'
        )
        params += [spec.customer, *left_out, spec.customer, spec.customer, *left_out]
        if changed_at:
            params += [*left_out, changed_at]
    if parts:
        frame = warehouse.query(" union all ".join(parts), params)
        for row in frame.itertuples():
            found[str(row.customer)] = LabelledRows(
                int(row.fresh), int(row.snapshot_rows), int(row.window_rows), int(row.since_change)
            )
    return found


def _existing(warehouse: Warehouse, tables: list[str]) -> set[str]:
    """Which of these tables (or views) exist, in one query."""
    if not tables:
        return set()
    marks = ", ".join("?" for _ in tables)
    schema = "" if warehouse.dialect == "duckdb" else " and table_schema = current_schema()"
    frame = warehouse.query(
        f'select table_name as "name" from information_schema.tables where table_name in ({marks}){schema}', tables
    )
    return {str(name) for name in frame["name"]}


def _moment(value) -> datetime | None:
    return None if pd.isna(value) else pd.Timestamp(value).to_pydatetime()


def _true(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value)


def _chunks(names: list[str]) -> list[list[str]]:
    return [names[start : start + NAMES_PER_SEARCH] for start in range(0, len(names), NAMES_PER_SEARCH)]


def _names(names: list[str]) -> str:
    return ", ".join("'" + name.replace("'", "''") + "'" for name in names)


def _text(value) -> str | None:
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
