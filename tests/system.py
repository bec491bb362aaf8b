"""
Test support: system programs some tests need (Chromium, curl) and what to
do when one is missing.

Locally a missing program skips the test with a reason that says how to
install it. With ``SIGNALING_REQUIRE_BROWSER=1`` in the environment (``.ci/run``
sets it) a missing program, or a missing private network namespace for
WebRTC, fails the test instead: CI can never skip them silently.
"""

from __future__ import annotations

import os
import unittest
from typing import NoReturn

__all__ = ["REQUIRE_ENV", "required", "unavailable"]

#: Environment variable that turns "skip" into "fail".
REQUIRE_ENV = "SIGNALING_REQUIRE_BROWSER"


def required() -> bool:
    """Whether missing browser-test prerequisites must fail the run."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def unavailable(reason: str) -> NoReturn:
    """Skip the current test for ``reason``, or fail it when prerequisites are required."""
    if required():
        raise AssertionError(f"{reason} ({REQUIRE_ENV} is set, so this is a failure)")
    raise unittest.SkipTest(f"{reason} (set {REQUIRE_ENV}=1 to make this a failure)")
