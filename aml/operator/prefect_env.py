"""The project's Prefect settings, applied before `prefect` is imported.

Prefect reads settings from the environment and the user's profile. The consortium must not
depend on whatever profile the operator happens to have: results are never persisted, task
inputs are never hashed into cache keys, `print` never becomes a log line, and nothing is
reported to Prefect's analytics. Import this module (and call `apply()`) before `import prefect`.
"""

from __future__ import annotations

import os

# Forced: these protect transaction data, so the user's profile cannot switch them back on.
FORCED = {
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
    "PREFECT_LOGGING_LOG_PRINTS": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

# Defaults: sensible here, but the operator may override them.
DEFAULTS = {
    # The temporary local server takes 14-20 s to start on a busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_UI_ENABLED": "false",
}


def apply() -> None:
    """Set the project's Prefect settings in this process (and the processes it spawns)."""
    os.environ.update(FORCED)
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)


apply()
