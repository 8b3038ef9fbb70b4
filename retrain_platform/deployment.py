"""Moving the champion by decision of a person, of the canary or of the rollback rule: approvals and rollbacks.

Training moves the champion only in `auto` mode. In `approve` mode a PROMOTE verdict tags the challenger
`approval=pending` and waits for `approve`; a canary whose challenger arm is significantly better online
promotes it the same way (`promote_challenger`). `rollback` moves the champion back. Each move is written to the
model ledger, because MLflow keeps no history of where its aliases pointed.
"""

from __future__ import annotations

from datetime import datetime

from retrain_platform import evaluation as evaluation_verdicts
from retrain_platform import ledger
from retrain_platform.registry import CHALLENGER, CHAMPION, ModelRegistry, RegistryError
from retrain_platform.spec import CustomerSpec
from retrain_platform.warehouse import Warehouse

APPROVAL_TAG = "approval"
PENDING = "pending"
APPROVED = "approved"
SUPERSEDED = "superseded"
ROLLBACK_VERDICT = "ROLLBACK"


class DeploymentError(ValueError):
    """The move cannot be made; the message says why in one line and nothing was changed."""


def pending_versions(registry: ModelRegistry, spec: CustomerSpec) -> list[str]:
    """Versions that a training found fit to promote and that wait for a person, oldest first."""
    found = registry.client.search_model_versions(f"name = '{spec.model_name}'")
    pending = [str(v.version) for v in found if v.tags.get(APPROVAL_TAG) == PENDING]
    return sorted(pending, key=int)


def approve(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: CustomerSpec,
    version: str | None = None,
    *,
    now: datetime,
    approved_by: str = "manual",
    dagster_run_id: str | None = None,
) -> ledger.LedgerEntry:
    """Promote a version awaiting approval (the latest one unless `version` is given) to champion."""
    pending = pending_versions(registry, spec)
    if version is None:
        if not pending:
            raise DeploymentError(f"{spec.customer} has no model awaiting approval")
        version = pending[-1]
    version = str(version)
    if version not in pending:
        if version not in registry.versions(spec.model_name):
            raise DeploymentError(f"{spec.customer} has no model version {version}")
        state = registry.version_tags(spec.model_name, version).get(APPROVAL_TAG, "never requested")
        raise DeploymentError(f"version {version} of {spec.customer} is not awaiting approval (approval: {state})")

    evaluation = _awaiting_row(warehouse, spec.customer, version)
    return _promote_approved(
        warehouse,
        registry,
        spec,
        version,
        pending,
        now=now,
        verdict=evaluation["verdict"] if evaluation is not None else evaluation_verdicts.PROMOTE,
        reasons=f"approved by {approved_by}" + ("" if evaluation is None else f"; evaluation: {evaluation['reasons']}"),
        trigger=f"approval: {approved_by}",
        dagster_run_id=dagster_run_id,
        data_version=evaluation["data_version"] if evaluation is not None else None,
    )


def promote_challenger(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: CustomerSpec,
    version: str,
    *,
    now: datetime,
    reasons: str,
    trigger: str,
    expected_champion: str | None,
    dagster_run_id: str | None = None,
) -> ledger.LedgerEntry:
    """Promote the `challenger` on evidence gathered after its training (the canary's realized metrics), by the
    same moves and ledger row as an approval, whether or not it was awaiting one. Nothing moves unless `version`
    is still the challenger and `expected_champion` still serves: the evidence is about those two models."""
    version = str(version)
    challenger = registry.alias_version(spec.model_name, CHALLENGER)
    champion = registry.alias_version(spec.model_name, CHAMPION)
    if challenger != version:
        raise DeploymentError(
            f"version {version} is no longer the challenger of {spec.customer} (it is {challenger}): nothing promoted"
        )
    if champion != (None if expected_champion is None else str(expected_champion)):
        raise DeploymentError(
            f"the champion of {spec.customer} is version {champion}, not {expected_champion}: nothing promoted"
        )
    if champion == version:
        raise DeploymentError(f"version {version} is already the champion of {spec.customer}")
    return _promote_approved(
        warehouse, registry, spec, version, pending_versions(registry, spec),
        now=now, verdict=evaluation_verdicts.PROMOTE, reasons=reasons, trigger=trigger, dagster_run_id=dagster_run_id,
    )  # fmt: skip


def _promote_approved(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: CustomerSpec,
    version: str,
    pending: list[str],
    *,
    now: datetime,
    verdict: str,
    reasons: str,
    trigger: str,
    dagster_run_id: str | None,
    data_version: str | None = None,
) -> ledger.LedgerEntry:
    before = registry.alias_version(spec.model_name, CHAMPION)
    registry.promote(spec.model_name, version)
    registry.set_version_tag(spec.model_name, version, APPROVAL_TAG, APPROVED)
    for older in pending:
        if int(older) < int(version):
            registry.set_version_tag(spec.model_name, older, APPROVAL_TAG, SUPERSEDED)
    entry = ledger.LedgerEntry(
        customer=spec.customer,
        model_name=spec.model_name,
        action=ledger.APPROVE,
        verdict=verdict,
        from_version=before,
        to_version=version,
        champion_after=version,
        reasons=reasons,
        trigger=trigger,
        dagster_run_id=dagster_run_id,
        data_version=data_version,
        recorded_at=now,
    )
    ledger.append(warehouse, entry)
    return entry


def rollback(
    warehouse: Warehouse,
    registry: ModelRegistry,
    spec: CustomerSpec,
    to_version: str | None = None,
    *,
    now: datetime,
    reason: str,
    trigger: str = "manual",
    expected_champion: str | None = None,
    dagster_run_id: str | None = None,
) -> ledger.LedgerEntry:
    """Move the champion back to `previous-champion` (or to `to_version`); the version it leaves becomes
    `previous-champion`. With `expected_champion`, nothing moves unless that version still serves: an
    automatic rollback never undoes a newer decision."""
    current = registry.alias_version(spec.model_name, CHAMPION)
    if expected_champion is not None and current != str(expected_champion):
        raise DeploymentError(
            f"the champion of {spec.customer} is version {current}, not {expected_champion}: nothing rolled back"
        )
    try:
        left, restored = registry.rollback(spec.model_name, None if to_version is None else str(to_version))
    except RegistryError as error:
        raise DeploymentError(str(error)) from None
    entry = ledger.LedgerEntry(
        customer=spec.customer,
        model_name=spec.model_name,
        action=ledger.ROLLBACK,
        verdict=ROLLBACK_VERDICT,
        from_version=left,
        to_version=restored,
        champion_after=restored,
        reasons=reason,
        trigger=trigger,
        dagster_run_id=dagster_run_id,
        recorded_at=now,
    )
    ledger.append(warehouse, entry)
    return entry


def _awaiting_row(warehouse: Warehouse, customer: str, version: str):
    history = ledger.history(warehouse, customer)
    rows = history[(history["action"] == ledger.AWAIT_APPROVAL) & (history["to_version"].astype(str) == version)]
    return None if rows.empty else rows.iloc[-1]
