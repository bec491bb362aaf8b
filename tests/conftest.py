"""
Test setup: the shared helpers import as ``helpers``, the repository's own
``signaling`` package wins over an installed copy, and every test runs in a
temporary working directory so ``mktemp()`` and default files never land in
the checkout. Hypothesis keeps its example database and caches in a
temporary directory of the test run too (by default it writes
``.hypothesis/`` into the directory pytest was started from). The run moves
into a private network namespace with only loopback when it can
(``netns.py``), and the browsers shared by the browser tests are closed at
the end (``browser.py``).
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
