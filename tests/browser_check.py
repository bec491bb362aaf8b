"""
A real browser as the client: headless Chromium runs a page whose two
``WebSocket`` objects register, see each other's presence and relay an
offer, the way a web application uses the server.

Not collected by the default run (it needs Debian's ``chromium``); run it
with ``python -m pytest -q tests/browser_check.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from helpers import ServerTestCase

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><body><script>
const log = [];
function report() { fetch('/result', {method: 'POST', body: JSON.stringify(log)}); }
const a = new WebSocket('ws://127.0.0.1:%(port)d/app');
a.onopen = () => a.send(JSON.stringify({type: 'register', peerId: 'tab-a', deviceType: 'desktop'}));
a.onerror = () => { log.push('a error'); report(); };
a.onmessage = (event) => {
  const m = JSON.parse(event.data);
  log.push('a<-' + m.type);
  if (m.type === 'registered') {
    const b = new WebSocket('ws://127.0.0.1:%(port)d/');
    b.onerror = () => { log.push('b error'); report(); };
    b.onopen = () => b.send(JSON.stringify({type: 'register', peerId: 'tab-b'}));
    b.onmessage = (event2) => {
      const n = JSON.parse(event2.data);
      log.push('b<-' + n.type);
      if (n.type === 'registered') {
        b.send(JSON.stringify({type: 'offer', to: 'tab-a', from: 'spoofed',
                               offer: {type: 'offer', sdp: 'v=0 '.repeat(1000)}}));
      }
    };
  }
  if (m.type === 'offer') {
    log.push('from=' + m.from + ' sdp=' + m.offer.sdp.length);
    a.onclose = (event3) => { log.push('a closed ' + event3.code); report(); };
    a.close(1000);
  }
};
</script></body></html>"""


class _Page(Resource):
    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self.html = html
        self.result: defer.Deferred = defer.Deferred()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.html

    def render_POST(self, request: Any) -> bytes:
        if not self.result.called:
            self.result.callback(json.loads(request.content.read()))
        return b""


class BrowserTests(ServerTestCase):
    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def test_chromium_registers_sees_presence_and_relays(self):
        self.assertIsNotNone(CHROMIUM, "Chromium is needed for this check: apt-get install chromium")
        page = _Page((PAGE % {"port": self.port}).encode())
        port = reactor.listenTCP(0, Site(page), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        profile = tempfile.mkdtemp(prefix="signaling-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        browser = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
             f"http://127.0.0.1:{port.getHost().port}/"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=dict(os.environ, HOME=profile),
        )

        def stop_browser() -> None:
            browser.kill()
            browser.wait(10)

        self.addCleanup(stop_browser)
        log = yield page.result.addTimeout(60, reactor)
        # The two sockets' messages interleave in any order; each one's own order is fixed.
        self.assertEqual(
            [line for line in log if not line.startswith("b")],
            ["a<-registered", "a<-peer-status", "a<-offer", "from=tab-b sdp=4000", "a closed 1000"],
        )
        self.assertEqual([line for line in log if line.startswith("b")], ["b<-registered"])
