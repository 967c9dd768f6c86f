"""Scheduler backends: one class per scheduler behind a small async contract."""

from .base import SchedulerBackend, SchedulerState, SchedulerStatus, load_backend

__all__ = ["SchedulerBackend", "SchedulerState", "SchedulerStatus", "load_backend"]
