"""
Test support: headless Chromium driven by Selenium, shared by the browser
tests of the whole run.

Debian's ``chromium`` and ``chromium-driver`` are used directly (the driver
always matches the browser, and nothing is downloaded: ``SE_OFFLINE``).
Browsers are started on first use, kept for the whole run (tests open their
pages and leave ``about:blank`` behind) and closed by :func:`quit_all` at the
end of the run (``conftest.py``).

Each browser trusts one test certificate, made once per run
(:func:`session_certificates`), through ``--ignore-certificate-errors-spki-list``:
the TLS handshake, ALPN included, is real.

Selenium calls block, and the server under test runs on this process's
reactor, so :class:`BrowserTestCase` makes every call in a thread and waits
for it with a bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, threads

from certs import PKI, CertFiles
from helpers import ServerTestCase, pause
from system import unavailable

__all__ = [
    "CHROMIUM", "CHROMEDRIVER", "INSTALL", "BrowserTestCase", "quit_all",
    "session_certificates", "why_unavailable",
]

#: Debian's Chromium binary (``/usr/bin/chromium`` is a shell wrapper) and
#: driver; other systems may name theirs in these environment variables.
CHROMIUM = os.environ.get("SIGNALING_TEST_CHROMIUM", "/usr/lib/chromium/chromium")
CHROMEDRIVER = os.environ.get("SIGNALING_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
#: How to get what the browser tests need.
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
#: Seconds any single wait on a browser may take.
BROWSER_WAIT = 30.0

_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--disable-extensions", "--window-size=800,600",
    # Traffic only to 127.0.0.1: no DNS, no mDNS hiding of candidates.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    # WebRTC on loopback, with a fake camera and microphone, permission granted.
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
]

_lock = threading.RLock()
_drivers: dict[str, Any] = {}
_profiles: list[str] = []
_certificates: CertFiles | None = None


def why_unavailable() -> str | None:
    """None when Chromium, its driver and Selenium are installed; else what is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        return f"headless Chromium tests need {', '.join(missing)}: {INSTALL}"
    return None


def session_certificates() -> CertFiles:
    """The TLS files (root CA, chain, leaf for 127.0.0.1) every browser of this run trusts."""
    global _certificates
    with _lock:
        if _certificates is None:
            directory = tempfile.mkdtemp(prefix="signaling-browser-tls-")
            _profiles.append(directory)
            _certificates = PKI.create("signaling browser test").write(directory)
        return _certificates


def _spki_hash(files: CertFiles) -> str:
    spki = files.leaf.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def _start() -> Any:
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never go online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="signaling-chromium-")
    _profiles.append(profile)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in _FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--ignore-certificate-errors-spki-list={_spki_hash(session_certificates())}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(BROWSER_WAIT)
    driver.set_page_load_timeout(BROWSER_WAIT)
    return driver


def _driver(name: str) -> Any:
    """The shared browser ``name``, started (or restarted, if it died) on demand."""
    with _lock:
        driver = _drivers.get(name)
        if driver is not None:
            try:
                driver.current_url
            except Exception:
                _quit(driver)
                driver = None
        if driver is None:
            driver = _drivers[name] = _start()
        return driver


def _quit(driver: Any) -> None:
    try:
        driver.quit()
    except Exception:
        pass


def quit_all() -> None:
    """Close every browser of the run and remove their profiles."""
    with _lock:
        for driver in _drivers.values():
            _quit(driver)
        _drivers.clear()
        for path in _profiles:
            shutil.rmtree(path, ignore_errors=True)
        _profiles.clear()


#: JavaScript run in a page of the server: imports the client library and
#: creates ``clients[peerId] = {client, log}``; ``log`` records every message
#: and event the client emits, with the page's clock in ``at``.
MAKE_CLIENT = """
return (async (url, options) => {
  const lib = await import('/client/signaling-client.js');
  window.lib = lib;
  window.clients = window.clients || {};
  const client = new lib.SignalingClient(url || location.origin, options);
  const log = [];
  client.on('*', (m) => { log.push({...m, at: Date.now()}); });
  window.clients[options.peerId] = {client, log};
  return true;
})(arguments[0], arguments[1]);
"""


class BrowserTestCase(ServerTestCase):
    """A server per test, as :class:`ServerTestCase`, plus the shared browsers."""

    def setUp(self) -> Any:
        reason = why_unavailable()
        if reason is not None:
            unavailable(reason)
        return super().setUp()

    def start_server(self, **overrides: Any) -> None:
        """
        Start the server with a short handshake deadline: Autobahn keeps even
        a cancelled handshake timer until it would have fired, and the test's
        cleanup waits for it. (The connections browsers keep alive are cut by
        the server's own shutdown.)
        """
        overrides.setdefault("handshake_timeout", 1.0)
        super().start_server(**overrides)

    @defer.inlineCallbacks
    def browser(self, name: str = "first") -> Any:
        """The shared browser ``name``; it shows ``about:blank`` again after the test."""
        driver = yield threads.deferToThread(_driver, name)
        self.addCleanup(self._blank, driver)
        return driver

    def _blank(self, driver: Any) -> defer.Deferred:
        # Leaving the page closes its sockets and stops its reconnection timers.
        return threads.deferToThread(driver.get, "about:blank")

    def open(self, driver: Any, url: str) -> defer.Deferred:
        """Load ``url`` in ``driver``."""
        return threads.deferToThread(driver.get, url)

    def js(self, driver: Any, script: str, *args: Any) -> defer.Deferred:
        """Run ``script`` (a function body; a returned Promise is awaited) in the page."""
        return threads.deferToThread(driver.execute_script, script, *args)

    @defer.inlineCallbacks
    def until(self, driver: Any, expression: str, what: str, *args: Any,
              timeout: float = BROWSER_WAIT, show: str = "null") -> Any:
        """
        Poll the JavaScript ``expression`` until it is truthy; fires with its
        value. Fails after ``timeout`` seconds with ``what``, the value of the
        JavaScript ``show`` then, and the browser console.
        """
        deadline = reactor.seconds() + timeout
        while True:
            value = yield self.js(driver, f"return ({expression});", *args)
            if value:
                return value
            if reactor.seconds() > deadline:
                shown = yield self.js(driver, f"return JSON.stringify({show});", *args)
                console = yield threads.deferToThread(driver.get_log, "browser")
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; at the end: {shown};"
                    " browser console:\n"
                    + "\n".join(entry.get("message", "") for entry in console[-30:])
                )
            yield pause(0.1)

    @defer.inlineCallbacks
    def make_client(self, driver: Any, peer_id: str, url: str | None = None,
                    **options: Any) -> Any:
        """A library client in ``driver``'s page, reachable as ``clients[peer_id]``."""
        yield self.js(driver, MAKE_CLIENT, url, {"peerId": peer_id, **options})

    def call(self, driver: Any, peer_id: str, code: str, *args: Any) -> defer.Deferred:
        """Run ``code`` with ``client`` and ``log`` bound to ``clients[peer_id]``."""
        return self.js(
            driver,
            "const {client, log} = window.clients[arguments[0]];"
            "const args = arguments[1];" + code,
            peer_id, list(args),
        )

    @defer.inlineCallbacks
    def events(self, driver: Any, peer_id: str, type_: str) -> Any:
        """Every logged message of ``type_`` of ``clients[peer_id]``."""
        value = yield self.call(
            driver, peer_id, "return JSON.stringify(log.filter((m) => m.type === args[0]));", type_
        )
        return json.loads(value)

    def wait_event(self, driver: Any, peer_id: str, type_: str, count: int = 1,
                   condition: str = "true") -> defer.Deferred:
        """
        Wait until ``clients[peer_id]`` logged ``count`` messages of ``type_``
        for which the JavaScript ``condition`` on ``m`` holds; fires with them.
        """
        return self.until(
            driver,
            "(() => { const found = window.clients[arguments[0]].log.filter("
            f"(m) => m.type === arguments[1] && ({condition}));"
            " return found.length >= arguments[2] && JSON.stringify(found); })()",
            f"{count} {type_!r} message(s) at {peer_id} where {condition}",
            peer_id, type_, count,
        ).addCallback(json.loads)
