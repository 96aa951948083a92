"""The service as a process now lives in mailservice/testing/service_process.py, shared with the
bench; these names stay here for the test files that still import them from tests/."""

from __future__ import annotations

from mailservice.testing.service_process import ROOT, ServiceProcess

__all__ = ["ROOT", "ServiceProcess"]
