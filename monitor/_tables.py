"""Imports every module that declares state-store tables (see ``state.open_state``)."""
import monitor.validate  # noqa: F401  (validation_results)
from monitor import alerting  # noqa: F401
from monitor import profile as profile
