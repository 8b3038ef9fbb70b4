"""Shared fixtures: a real platform home under tmp_path (DuckDB warehouse, sqlite MLflow registry), a
temporary Dagster instance, demo customers loaded into the warehouse, and real training runs.

Function-scoped fixtures (`home`, `resources`, `warehouse`, `registry`, `instance`, `platform`,
`load_customer`, `train`) give every test its own state. For state that is expensive to build and
shared by the tests of one module (a customer trained once), use `open_platform`, which works at any
scope::

    @pytest.fixture(scope="module")
    def trained(open_platform, tmp_path_factory):
        with open_platform(tmp_path_factory.mktemp("trained")) as platform:
            platform.load_customer("lumen-streaming")
            yield platform, platform.train("lumen-streaming")
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports MLflow or great-expectations: no telemetry, no usage statistics.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
# `retrain_platform.definitions` builds its resources from RETRAIN_HOME when imported: point it at a
# throwaway folder, so no test (or import at collection time) writes `.retrain/` into the working directory.
_DEFAULT_HOME = tempfile.mkdtemp(prefix="retrain-tests-default-home-")
os.environ["RETRAIN_HOME"] = _DEFAULT_HOME
os.environ["RETRAIN_ENV"] = "local"
os.environ.pop("RETRAIN_ALERT_WEBHOOK_URL", None)  # alerts stay in the warehouse: no test posts anywhere

from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import dagster as dg  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from retrain_platform import customers as customer_store  # noqa: E402
from retrain_platform.defs.resources import local_resources  # noqa: E402
from retrain_platform.demo_data import DemoCustomer, demo_customers  # noqa: E402
from retrain_platform.ingest import BATCH_COLUMN, HISTORY_BATCH  # noqa: E402
from retrain_platform.registry import ModelRegistry  # noqa: E402
from retrain_platform.settings import Home  # noqa: E402
from retrain_platform.spec import CustomerSpec, complete_spec, parse_spec  # noqa: E402
from retrain_platform.warehouse import Warehouse, quote  # noqa: E402

# Small on purpose: the demo customers' shape, at a size that trains in a few seconds.
TEST_HISTORY_ROWS = 2_000
TEST_BATCH_ROWS = 500
TEST_SEARCH = {"search_iterations": 2, "cv_splits": 2}
TEST_TRIGGER = "test"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def project_definitions(resources: dict) -> dg.Definitions:
    """The code location's assets, checks, jobs and executor, bound to `resources` instead of the ones
    `definitions.py` built from the environment: tests run exactly the jobs the CLI and the UI run."""
    from retrain_platform.definitions import defs

    return dg.Definitions(
        assets=defs.assets,
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        executor=defs.executor,
        resources=resources,
    )


@dataclass
class Platform:
    """One platform home with its resources and a Dagster instance, and the few actions tests take."""

    home: Home
    resources: dict
    instance: dg.DagsterInstance
    demo: dict[str, DemoCustomer]
    defs: dg.Definitions

    @property
    def warehouse(self) -> Warehouse:
        return self.resources["warehouse"].get_warehouse()

    @property
    def registry(self) -> ModelRegistry:
        return self.resources["registry"].get_registry()

    def load_customer(self, name: str, *, history: pd.DataFrame | None = None, **spec_overrides) -> CustomerSpec:
        """Onboard a demo customer as the CLI does: its landing table (rows tagged with the `history`
        batch), its completed spec and its Dagster partition.

        `spec_overrides` replace fields of the demo spec (e.g. `mode="approve"`); `history` replaces
        the demo history. Loading the same customer again replaces its landing table.
        """
        customer = self.demo[name]
        history = customer.history if history is None else history
        spec = complete_spec(parse_spec({**customer.spec, **spec_overrides}), history)
        self.replace_landing(spec, history.assign(**{BATCH_COLUMN: HISTORY_BATCH}))
        customer_store.save_spec(self.warehouse, spec)
        self.instance.add_dynamic_partitions("customers", [spec.customer])
        return spec

    def replace_landing(self, spec: CustomerSpec, frame: pd.DataFrame) -> None:
        """Re-create the landing table from `frame`, column types included (to simulate a bad load)."""
        self.warehouse.execute(f"drop table if exists {quote(spec.landing_table)}")
        self.warehouse.write(spec.landing_table, frame)

    def landing(self, spec: CustomerSpec) -> pd.DataFrame:
        return customer_store.load_landing(self.warehouse, spec)

    def run_job(
        self, job: str, partition_key: str, run_config: dict | None = None, asset_selection=None
    ) -> dg.ExecuteInProcessResult:
        """One real run of a project job for one partition; a failing run is returned, not raised."""
        return self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance,
            partition_key=partition_key,
            run_config={**QUIET, **(run_config or {})},
            asset_selection=asset_selection,
            raise_on_error=False,
        )

    def train(self, customer: str, *, trigger: str = TEST_TRIGGER, **search) -> dg.ExecuteInProcessResult:
        """A real run of the `train_customer` job (snapshot to deployed model, drift baseline, checks).

        The search is small unless overridden (`search_iterations=`, `cv_splits=`, `max_search_rows=`).
        A failing run is returned, not raised, so tests can look at what failed.
        """
        config = {**TEST_SEARCH, **search, "trigger": trigger}
        ops = {"candidate_models": {"config": config}, "deployed_model": {"config": {"trigger": trigger}}}
        return self.run_job("train_customer", customer, {"ops": ops})


@pytest.fixture(scope="session", autouse=True)
def _remove_default_home() -> Iterator[None]:
    yield
    shutil.rmtree(_DEFAULT_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_data() -> dict[str, DemoCustomer]:
    """The five demo customers (seed 0), small: 2,000 history rows and 6 weekly batches of 500 rows."""
    return {c.customer: c for c in demo_customers(seed=0, history_rows=TEST_HISTORY_ROWS, batch_rows=TEST_BATCH_ROWS)}


@pytest.fixture(scope="session")
def open_platform(demo_data) -> Callable[[Path], contextmanager]:
    """`with open_platform(folder) as platform:` a fresh platform under `folder`, usable at any scope."""

    @contextmanager
    def open_(root: Path) -> Iterator[Platform]:
        home = Home(Path(root) / "home").ensure()
        instance_dir = Path(root) / "dagster-instance"
        instance_dir.mkdir(parents=True, exist_ok=True)
        resources = local_resources(home)
        with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
            yield Platform(home, resources, instance, demo_data, project_definitions(resources))

    return open_


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home").ensure()


@pytest.fixture
def resources(home) -> dict:
    return local_resources(home)


@pytest.fixture
def warehouse(resources) -> Warehouse:
    return resources["warehouse"].get_warehouse()


@pytest.fixture
def registry(resources) -> ModelRegistry:
    return resources["registry"].get_registry()


@pytest.fixture
def instance(tmp_path) -> Iterator[dg.DagsterInstance]:
    folder = tmp_path / "dagster-instance"
    folder.mkdir()
    with dg.instance_for_test(temp_dir=str(folder)) as instance:
        yield instance


@pytest.fixture
def platform(home, resources, instance, demo_data) -> Platform:
    return Platform(home, resources, instance, demo_data, project_definitions(resources))


@pytest.fixture
def load_customer(platform) -> Callable[..., CustomerSpec]:
    """`load_customer("lumen-streaming", mode="approve")`: onboard a demo customer, return its spec."""
    return platform.load_customer


@pytest.fixture
def train(platform) -> Callable[..., dg.ExecuteInProcessResult]:
    """`train("lumen-streaming")`: one real, small training run; returns the (possibly failed) result."""
    return platform.train
