"""Library log lines that tell a user nothing they can act on, kept off their terminal and out of run logs.

Each is matched by its logger and the start of its message, so every other line of the same logger still shows.
"""

from __future__ import annotations

import logging

KNOWN_NOTICES: dict[str, tuple[str, ...]] = {
    # The registry saves models with cloudpickle on purpose: the pipeline carries our own functions
    # (FunctionTransformer), which the recommended skops format loads only from a list of trusted types.
    "mlflow.sklearn": ("Saving scikit-learn models in the pickle or cloudpickle format",),
    # A new home's MLflow database is created on first use; nothing went wrong.
    "mlflow.store.db.utils": ("Creating initial MLflow database tables", "Updating database tables"),
}


class _DropKnownNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.starts)


def quiet_known_notices() -> None:
    """Drop the known notices wherever they are logged in this process; calling it again changes nothing."""
    for name, starts in KNOWN_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropKnownNotices) for existing in logger.filters):
            logger.addFilter(_DropKnownNotices(starts))
