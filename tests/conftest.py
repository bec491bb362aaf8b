"""
Test setup: the shared helpers import as ``helpers``, the repository's own
``signaling`` package wins over an installed copy, and every test runs in a
temporary working directory so ``mktemp()`` and default files never land in
the checkout. Hypothesis keeps its example database and caches in a
temporary directory of the test run too (by default it writes
``.hypothesis/`` into the directory pytest was started from).

Two kinds of Twisted tests live side by side: trial ``TestCase`` classes,
which spin the reactor themselves, and pytest tests run by pytest-twisted
(``@pytest_twisted.inlineCallbacks`` with the :func:`server` fixture), which
runs the reactor in a greenlet from its first such test on. Trial cannot
run a reactor that is already running, so the trial classes run first.

The run moves into a private network namespace with only loopback when it
can (``netns.py``), and the browsers shared by the browser tests are closed
at the end (``browser.py``).
"""

import os
import shutil
import sys
import tempfile

import pytest
import pytest_twisted

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [TESTS, os.path.dirname(TESTS)]

_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="signaling-hypothesis-")


def pytest_configure(config):
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_HYPOTHESIS_HOME)
    # Before any thread starts: the run moves into a network namespace that
    # has only loopback (when permitted), for WebRTC between browser pages.
    import netns

    netns.isolate()


def pytest_unconfigure(config):
    import browser

    browser.quit_all()
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _temporary_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def pytest_collection_modifyitems(session, config, items):
    """Run trial TestCases before the pytest-twisted tests (order otherwise kept)."""
    from twisted.trial.unittest import SynchronousTestCase

    def is_trial(item) -> bool:
        cls = getattr(item, "cls", None)
        return cls is not None and issubclass(cls, SynchronousTestCase)

    items.sort(key=lambda item: 0 if is_trial(item) else 1)


@pytest.fixture
def server():
    """
    A factory of running servers on 127.0.0.1 port 0 (in-memory store,
    timers on a ``task.Clock``): ``service = server(**config)``; each is
    stopped after the test, its connections first.
    """
    from twisted.internet import reactor, task

    from helpers import server_config, settle_autobahn_timers
    from signaling.service import make_service

    started = []

    def start(**overrides):
        service = make_service(server_config(**overrides), reactor, clock=task.Clock())
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(service.stopService())
    pytest_twisted.blockon(settle_autobahn_timers())


@pytest.fixture(scope="session", autouse=True)
def _private_redis_server():
    """Stop the private redis-server of the cluster tests, if one was started."""
    yield
    import redis_server

    redis_server.stop_shared()
