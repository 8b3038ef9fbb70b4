"""The customer catalog: each customer's spec, kept in the warehouse so every process sees the same one."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from retrain_platform.spec import CustomerSpec, SpecError, parse_spec, validate_customer_id
from retrain_platform.warehouse import Warehouse, quote

SPECS_TABLE = "customer_specs"


class UnknownCustomerError(LookupError):
    pass


def save_spec(warehouse: Warehouse, spec: CustomerSpec) -> None:
    row = pd.DataFrame(
        {
            "customer": [spec.customer],
            "spec_json": [spec.model_dump_json()],
            "updated_at": [pd.Timestamp(datetime.now(timezone.utc).replace(tzinfo=None))],
        }
    )
    warehouse.write(SPECS_TABLE, row, replace_where={"customer": spec.customer})


def load_spec(warehouse: Warehouse, customer: str) -> CustomerSpec:
    validate_customer_id(customer)
    if not warehouse.table_exists(SPECS_TABLE):
        raise UnknownCustomerError(f"unknown customer {customer!r}: no customer has been set up yet")
    rows = warehouse.query(f'select "spec_json" from {quote(SPECS_TABLE)} where "customer" = ?', [customer])
    if rows.empty:
        raise UnknownCustomerError(f"unknown customer {customer!r}")
    return parse_spec(json.loads(rows.iloc[0, 0]))


def list_specs(warehouse: Warehouse) -> list[CustomerSpec]:
    if not warehouse.table_exists(SPECS_TABLE):
        return []
    rows = warehouse.query(f'select "spec_json" from {quote(SPECS_TABLE)} order by "customer"')
    return [parse_spec(json.loads(text)) for text in rows["spec_json"]]


def load_landing(warehouse: Warehouse, spec: CustomerSpec) -> pd.DataFrame:
    if not warehouse.table_exists(spec.landing_table):
        raise SpecError(f"landing_table: table {spec.landing_table!r} does not exist in the warehouse")
    return warehouse.query(f"select * from {quote(spec.landing_table)}")


# Where a sensor that pages through customers keeps, in its cursor, the last customer its latest tick evaluated.
PAGE_CURSOR_KEY = "after"


def customer_page(specs: list[CustomerSpec], after: str | None, size: int) -> tuple[list[CustomerSpec], str | None]:
    """At most `size` customers, in id order, after the customer `after` (from the first when None), and where
    the next page starts: the last customer of this one, or None when this page reached the end (the next
    starts over). With `size` customers or fewer, every page holds them all."""
    ordered = sorted(specs, key=lambda spec: spec.customer)
    remaining = [spec for spec in ordered if after is None or spec.customer > after] or ordered
    page = remaining[:size]
    return page, (page[-1].customer if len(remaining) > size else None)
