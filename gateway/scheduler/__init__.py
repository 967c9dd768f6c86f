"""Scheduler backends: one class per scheduler behind a small async contract."""

from .base import SchedulerBackend, SchedulerState, SchedulerStatus, load_backend
from .options import InvalidSubmitOptions, SubmitOptions

__all__ = ["InvalidSubmitOptions", "SchedulerBackend", "SchedulerState", "SchedulerStatus",
           "SubmitOptions", "load_backend"]
