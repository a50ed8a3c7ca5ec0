"""Imports every module that declares state-store tables (see ``state.open_state``)."""
from monitor import alerting  # noqa: F401
from monitor import profile as profile
