"""Shared fixtures: a real platform home under tmp_path (DuckDB warehouse, sqlite MLflow registry), a
temporary Dagster instance, demo customers loaded into the warehouse, and real training runs; and the one
helper that runs the command line as a user does (`cli`, with `assert_one_line_error` for its errors).

Function-scoped fixtures (`home`, `resources`, `warehouse`, `registry`, `instance`, `platform`,
`load_customer`, `train`) give every test its own state. A demo customer trained by one small run is built
once per session by `trained_customer` (once per xdist worker) and never opened by a test: a test, or a
module, works on a copy of its own, which it may change::

    @pytest.fixture(scope="module")
    def trained(trained_customer, copy_platform, tmp_path_factory):
        lumen = trained_customer("lumen-streaming")  # .spec, and .result: the training run
        with copy_platform(lumen, tmp_path_factory.mktemp("trained")) as platform:
            yield platform, lumen

For other expensive state shared by the tests of one module, `open_platform` opens a fresh platform at any
scope.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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
# Under pytest-xdist the workers already use every core: one BLAS/OpenMP thread per process (the CLI
# subprocesses inherit it). More threads only spin while they wait, burning the CPU the other worker needs
# (about a tenth of the fast lane's CPU time on two cores).
if "PYTEST_XDIST_WORKER" in os.environ:
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

from collections import Counter  # noqa: E402
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
from retrain_platform.registry import ModelRegistry, move_local_store  # noqa: E402
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


# ---------------------------------------------------------------------------------------------------
# The command line, as a user runs it

# A Python warning on stderr is two lines: "path:line: SomeWarning: message" and the indented source line.
_WARNING_LINE = re.compile(r"^\S.*:\d+: \w*Warning: ")


def cli(
    *args: str, home: Path, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None, background: bool = False
) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run `python -m retrain_platform.cli ARGS` in a subprocess with RETRAIN_HOME=home, the way a user would
    (the CLI derives DAGSTER_HOME from the home). `env` adds variables; `background=True` returns the running
    process (stdout and stderr piped) instead of waiting for it."""
    environment = {
        **os.environ,
        "RETRAIN_HOME": str(home),
        "RETRAIN_ENV": "local",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        **(env or {}),
    }
    environment.pop("DAGSTER_HOME", None)  # a test's temporary instance sets it in this process
    command = [sys.executable, "-m", "retrain_platform.cli", *args]
    if background:
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=cwd
        )
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """stderr without Python warnings (which libraries emit on import): what the CLI itself said."""
    lines, skip_source_line = [], False
    for line in stderr.splitlines():
        if skip_source_line and line.startswith(" "):
            skip_source_line = False
            continue
        skip_source_line = bool(_WARNING_LINE.match(line))
        if not skip_source_line and line.strip():
            lines.append(line)
    return lines


def skip_unless_required(reason: str) -> None:
    """Skip a test whose outside program (PostgreSQL's server, docker-compose) is missing, except where `.ci/run`
    installed it (RETRAIN_TEST_SERVICES=required): there a skip would hide a broken install, so it fails."""
    if os.environ.get("RETRAIN_TEST_SERVICES") == "required":
        pytest.fail(reason)
    pytest.skip(reason)


def assert_one_line_error(completed: subprocess.CompletedProcess, *fragments: str) -> str:
    """The command failed with one `error: ` line on stderr (warnings aside) holding every fragment."""
    assert completed.returncode != 0
    assert "Traceback" not in completed.stderr
    lines = error_lines(completed.stderr)
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="session", autouse=True)
def _remove_default_home() -> Iterator[None]:
    yield
    shutil.rmtree(_DEFAULT_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_leftover_definitions_state() -> Iterator[None]:
    """Each test starts with no ambient definitions-state storage. An entered DagsterInstance installs its own
    in a context variable, and exiting two instances out of order (a session fixture's and a test's) leaves one
    whose instance is gone; the next `materialize` on that worker then fails with "undefined DagsterInstance
    weakref". None of our definitions keep state there."""
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)
    yield
    _current_storage.set(None)


# Dagster's backfill daemon looks at backfills every 30 s (a constant, not an instance setting), so an onboarding
# through two backfills waits about two minutes on it, doing nothing. Imported by every Python process started
# with its folder on PYTHONPATH; it changes only `dagster-daemon`, whose backfill (and automation) loop then
# looks every 5 s.
FAST_BACKFILLS = """\
import sys

if sys.argv and sys.argv[0].endswith("dagster-daemon"):
    import dagster._daemon.controller

    dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 5
"""


@pytest.fixture(scope="session")
def fast_backfills(tmp_path_factory) -> dict[str, str]:
    """`cli(..., env=fast_backfills)`: a Dagster daemon the command starts runs its backfills every 5 s, not 30 s."""
    folder = tmp_path_factory.mktemp("fast-backfills")
    (folder / "sitecustomize.py").write_text(FAST_BACKFILLS)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def demo_data() -> dict[str, DemoCustomer]:
    """The five demo customers (seed 0), small: 2,000 history rows and 6 weekly batches of 500 rows."""
    return {c.customer: c for c in demo_customers(seed=0, history_rows=TEST_HISTORY_ROWS, batch_rows=TEST_BATCH_ROWS)}


@pytest.fixture(scope="session")
def blank_platform(tmp_path_factory) -> Path:
    """An empty platform folder, built once per session: a home whose MLflow database has its tables, and a
    Dagster instance folder whose storage is set up. Fresh homes and instances are copies of it: creating
    MLflow's tables takes about two seconds, a Dagster instance's storage about one."""
    root = tmp_path_factory.mktemp("blank-platform")
    home = Home(root / "home").ensure()
    local_resources(home)["registry"].get_registry().client.search_registered_models()
    (root / "dagster-instance").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster-instance")) as instance:
        instance.get_runs()
    return root


def _fresh(blank: Path, root: Path, part: str) -> Path:
    """`root/part` ("home" or "dagster-instance") copied from the blank platform, unless it exists."""
    target = Path(root) / part
    if not target.exists():
        shutil.copytree(blank / part, target)
        if part == "home":
            move_local_store(Home(target).mlflow_db, str(blank / part), str(target))
    return target


@pytest.fixture(scope="session")
def open_platform(demo_data, blank_platform) -> Callable[[Path], contextmanager]:
    """`with open_platform(folder) as platform:` a fresh platform under `folder` (or the platform already
    there), usable at any scope."""

    @contextmanager
    def open_(root: Path) -> Iterator[Platform]:
        home = Home(_fresh(blank_platform, root, "home")).ensure()
        instance_dir = _fresh(blank_platform, root, "dagster-instance")
        resources = local_resources(home)
        with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
            yield Platform(home, resources, instance, demo_data, project_definitions(resources))

    return open_


@dataclass(frozen=True)
class TrainedCustomer:
    """A platform folder where one demo customer was loaded and trained by one small run (`Platform.train`),
    the customer's spec and that run's result. The folder is a template: tests open copies of it."""

    root: Path
    spec: CustomerSpec
    result: dg.ExecuteInProcessResult


@pytest.fixture(scope="session")
def trained_customer(open_platform, tmp_path_factory) -> Callable[[str], TrainedCustomer]:
    """`trained_customer("lumen-streaming")`: that demo customer trained, built at most once per session (per
    xdist worker) however many modules ask for it. Open it with `copy_platform`, never in place."""
    built: dict[str, TrainedCustomer] = {}

    def build(name: str) -> TrainedCustomer:
        if name not in built:
            root = tmp_path_factory.mktemp(f"trained-{name}")
            with open_platform(root) as platform:
                spec = platform.load_customer(name)
                result = platform.train(name)
                assert result.success, f"training {name} for the session failed"
            built[name] = TrainedCustomer(root, spec, result)
        return built[name]

    return build


@pytest.fixture(scope="session")
def copy_platform(open_platform) -> Callable[[TrainedCustomer, Path], contextmanager]:
    """`with copy_platform(trained, folder) as platform:` a platform of one's own under `folder` (new or empty),
    copied from a trained template; usable at any scope."""

    @contextmanager
    def copy_(trained: TrainedCustomer, root: Path) -> Iterator[Platform]:
        shutil.copytree(trained.root, root, dirs_exist_ok=True)
        move_local_store(Home(Path(root) / "home").mlflow_db, str(trained.root / "home"), str(Path(root) / "home"))
        with open_platform(root) as platform:
            yield platform

    return copy_


@pytest.fixture
def home(tmp_path, blank_platform) -> Home:
    return Home(_fresh(blank_platform, tmp_path, "home")).ensure()


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
def instance(tmp_path, blank_platform) -> Iterator[dg.DagsterInstance]:
    folder = _fresh(blank_platform, tmp_path, "dagster-instance")
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


# Session-scoped fixtures whose state is expensive and shared by tests of several modules; tests that use one
# run on the same xdist worker, so it is built once in the run rather than once per worker.
SHARED_SESSION_STATE = {"trained_customer"}


def _shared_state(item: pytest.Item) -> set[tuple[str, str]]:
    """What the test shares with others: the module- (class-, package-) scoped fixtures it uses, by where their
    one instance lives, and the fixtures of SHARED_SESSION_STATE."""
    module = item.nodeid.split("::")[0]
    shared = set()
    # pytest has no public API for a test's fixture definitions; plugins read `_fixtureinfo`.
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        scope = definitions[-1].scope
        if scope in ("module", "class", "package"):
            shared.add((module if scope != "class" else item.nodeid.rsplit("::", 1)[0], name))
        elif scope == "session" and name in SHARED_SESSION_STATE:
            shared.add(("session", name))
    return shared


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (setup.cfg: --dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that share state built once (a module fixture, a trained customer) form one xdist group, which one
    worker runs; every other test is handed out on its own. The units with the most slow tests go first, so
    the long ones start at once and the many quick tests even out the end (`--no-loadscope-reorder` keeps
    this order)."""
    unit = {item.nodeid: item.nodeid for item in items}  # union-find over tests that share state

    def root(nodeid: str) -> str:
        while unit[nodeid] != nodeid:
            unit[nodeid] = unit[unit[nodeid]]
            nodeid = unit[nodeid]
        return nodeid

    first_user: dict[tuple[str, str], str] = {}
    for item in items:
        for state in _shared_state(item):
            other = first_user.setdefault(state, item.nodeid)
            unit[root(item.nodeid)] = root(other)

    members = Counter(root(item.nodeid) for item in items)
    modules: dict[str, set[str]] = {}
    for item in items:
        modules.setdefault(root(item.nodeid), set()).add(Path(item.nodeid.split("::")[0]).stem)
    grouped = []
    for item in items:
        if members[root(item.nodeid)] > 1:
            group = "+".join(sorted(modules[root(item.nodeid)]))
            item.add_marker(pytest.mark.xdist_group(group))
            grouped.append((item, group))
    slow = Counter(root(item.nodeid) for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[root(item.nodeid)])
    if getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        _name_groups_in_node_ids(grouped)


def _name_groups_in_node_ids(grouped: list[tuple[pytest.Item, str]]) -> None:
    """xdist's scheduler reads a test's group from the end of its node id ("...::test@group"). pytest-xdist 3.8
    writes it to `item._nodeid`, which pytest 9.2 no longer reads (it keeps the id in `item._id`; pytest-xdist
    issue 1386): every test then went to a worker on its own, and each module fixture and trained customer was
    built on both workers. On such a pytest the group is written where the id now lives."""
    if not grouped or not hasattr(grouped[0][0], "_id"):
        return  # an older pytest: xdist's own hook names the groups
    from _pytest.nodeid import NodeId

    for item, group in grouped:
        item._id = NodeId.parse(f"{item.nodeid}@{group}")
