"""
Test support: system tools some operator checks need (``systemd-analyze``,
``sqlite3``). Missing, such a check is skipped with the Debian package to
install, except in CI (``CI`` set), where ``.ci/run`` installs them and a
missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil

from twisted.trial.unittest import SkipTest

__all__ = ["require_tool"]


def require_tool(name: str, package: str) -> str:
    """The path of command ``name``; skips (or fails in CI) when it is not installed."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"needs the {name} command (Debian package {package})"
    if os.environ.get("CI"):
        raise AssertionError(message + ": .ci/run should have installed it")
    raise SkipTest(message)
