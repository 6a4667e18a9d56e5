"""Handlers and the runtime that runs them: ``mqctl.App``, ``mqctl.Retry``, ``mqctl.Reject``."""

from mqctl.worker.app import App, AppTest
from mqctl.worker.handler import Handler, Reject, Retry
from mqctl.worker.runner import HandlerCounts, HandlerRunner

__all__ = ["App", "AppTest", "Handler", "HandlerCounts", "HandlerRunner", "Reject", "Retry"]
