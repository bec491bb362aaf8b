"""
Test setup: the shared helpers import as ``helpers``, the repository's own
``signaling`` package wins over an installed copy, and every test runs in a
temporary working directory so ``mktemp()`` and default files never land in
the checkout. Hypothesis keeps its example database and caches in a
temporary directory of the test run too (by default it writes
``.hypothesis/`` into the directory pytest was started from).
"""

import os
import shutil
import sys
import tempfile

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]

_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="signaling-hypothesis-")


def pytest_configure(config):
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_HYPOTHESIS_HOME)


def pytest_unconfigure(config):
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _temporary_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def _private_redis_server():
    """Stop the private redis-server of the cluster tests, if one was started."""
    yield
    import redis_server

    redis_server.stop_shared()
