"""The console's tests use the ``start`` fixture of tests/conftest.py."""

from __future__ import annotations

from tests.conftest import Start

__all__ = ["Start"]
