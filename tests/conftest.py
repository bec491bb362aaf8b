"""
Test setup: the shared helpers import as ``helpers``, the repository's own
``signaling`` package wins over an installed copy, and every test runs in a
temporary working directory so ``mktemp()`` and default files never land in
the checkout.
"""

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]


@pytest.fixture(autouse=True)
def _temporary_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
