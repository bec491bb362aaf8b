"""
Real WebRTC between two headless Chromium instances through the server:
the demo page's video call (fake camera and microphone) and ``connectPeer``
data channels, also when both sides make an offer at once (glare).

WebRTC needs a network namespace with only loopback (``netns.py``): there
Chromium's only ICE candidates are 127.0.0.1 and nothing leaves the machine.
"""

from __future__ import annotations

from twisted.internet import defer

from signaling.messages import encode

import netns
from browser import BrowserTestCase
from system import unavailable

#: Page code: an RTCPeerConnection for ``other`` wired by connectPeer, with a
#: data channel on which each side says hello and echoes the other's hello;
#: ``rtc.received`` holds the distinct messages that arrived. ``mode``: "offer" opens
#: the channel, "answer" waits for it, "negotiated" opens a pre-negotiated
#: one (so both sides need an offer at the same time).
PEER = """
const [me, other, polite, mode] = args;
const pc = new RTCPeerConnection({iceServers: []});
const handle = window.lib.connectPeer(client, other, pc, {polite});
const rtc = window.rtc = {pc, handle, received: [], collisions: 0, errors: [], events: []};
client.on('*', (m) => rtc.events.push([Date.now() % 100000, m.type, m.from, m.state, pc.signalingState]));
pc.addEventListener('negotiationneeded', () => rtc.events.push([Date.now() % 100000, 'negotiationneeded', pc.signalingState]));
pc.addEventListener('icecandidate', (e) => rtc.events.push([Date.now() % 100000, 'local-candidate', e.candidate && e.candidate.candidate]));
handle.onerror = (e) => rtc.errors.push(String(e));
client.on('offer', () => { if (pc.signalingState === 'have-local-offer') rtc.collisions += 1; });
// Each side says hello until the other echoes it: under load Chromium can
// drop a message that arrives just before its channel's own open event, and
// the data channel itself is not the server's to test, only that it came up.
const wire = (dc) => {
  rtc.dc = dc;
  let echoed = false;
  dc.onmessage = (e) => {
    if (!rtc.received.includes(e.data)) rtc.received.push(e.data);
    if (e.data === 'echo: hello from ' + me) echoed = true;
    else if (!e.data.startsWith('echo')) dc.send('echo: ' + e.data);
  };
  const hello = () => {
    if (echoed || dc.readyState === 'closed') return;
    if (dc.readyState === 'open') dc.send('hello from ' + me);
    setTimeout(hello, 500);
  };
  hello();
};
if (mode === 'negotiated') wire(pc.createDataChannel('chat', {negotiated: true, id: 0}));
else if (mode === 'offer') wire(pc.createDataChannel('chat'));
else pc.ondatachannel = (e) => wire(e.channel);
"""


class WebRTCTestCase(BrowserTestCase):
    config = {"rate_limit": 0}

    def setUp(self):
        reason = netns.why_not_isolated()
        if reason is not None:
            unavailable(f"WebRTC between browser pages needs a network namespace with only"
                        f" loopback: {reason}")
        return super().setUp()

    @defer.inlineCallbacks
    def two_clients(self):
        """Two browsers, each with a page holding a connected client (alice, bob)."""
        pages = []
        for name, peer_id in (("first", "alice"), ("second", "bob")):
            driver = yield self.browser(name)
            yield self.open(driver, self.http + "/health")
            yield self.make_client(driver, peer_id)
            yield self.call(driver, peer_id, "return client.connect();")
            pages.append(driver)
        return pages

    @defer.inlineCallbacks
    def wait_echoes(self, a, b):
        show = ("[window.rtc.received, window.rtc.errors, window.rtc.pc.signalingState,"
                " window.rtc.pc.iceGatheringState, window.rtc.pc.iceConnectionState,"
                " window.rtc.pc.connectionState, window.rtc.events]")
        for driver, me, other in ((a, "alice", "bob"), (b, "bob", "alice")):
            try:
                received = yield self.until(
                    driver,
                    "window.rtc.received.length >= 2 && window.rtc.received.slice().sort()",
                    f"{me}'s data channel to carry both messages", show=show,
                )
            except AssertionError as e:
                shown = yield self.js(b if driver is a else a, f"return JSON.stringify({show});")
                raise AssertionError(f"{e}\nthe other page: {shown}") from None
            self.assertEqual(received, [f"echo: hello from {me}", f"hello from {other}"])
            errors = yield self.js(driver, "return window.rtc.errors;")
            self.assertEqual(errors, [])


class DemoCallTests(WebRTCTestCase):
    @defer.inlineCallbacks
    def until_or_show(self, other_driver, other_show, *args, **kwargs):
        """:meth:`until`; on failure the other page's ``other_show`` is reported too."""
        try:
            value = yield self.until(*args, **kwargs)
        except AssertionError as e:
            shown = yield self.js(other_driver, f"return JSON.stringify({other_show});")
            raise AssertionError(f"{e}\nthe other page: {shown}") from None
        return value

    @defer.inlineCallbacks
    def test_two_browsers_in_a_room_see_each_other(self):
        drivers = {}
        for name, peer_id in (("first", "ann"), ("second", "ben")):
            drivers[peer_id] = driver = yield self.browser(name)
            yield self.open(driver, f"{self.http}/demo/?room=standup&peerId={peer_id}")
        for peer_id, other in (("ann", "ben"), ("ben", "ann")):
            peers = yield self.until_or_show(
                drivers[other], "[window.demo.peers(), window.demo.events()]",
                drivers[peer_id],
                "(() => { const p = window.demo && window.demo.peers();"
                " return p && p.length === 1 && p[0].connectionState === 'connected'"
                " && p[0].framesDecoded > 0 && p; })()",
                f"{peer_id}'s call to be connected with video frames decoded",
                show="[window.demo && window.demo.peers(), document.getElementById('status')"
                     ".textContent, window.demo && window.demo.events()]",
            )
            self.assertEqual(peers[0]["peerId"], other)
        self.assertEqual(set(self.registry.rooms["standup"]), {"ann", "ben"})
        yield self.js(drivers["ann"], "window.demo.chat('hello ben');")
        messages = yield self.until(
            drivers["ben"],
            "window.demo.messages().filter((m) => m.from === 'ann' && m.text === 'hello ben')"
            ".length && window.demo.messages()",
            "ann's chat message at ben",
        )
        self.assertIn({"from": "ann", "text": "hello ben"}, messages)


class ConnectPeerTests(WebRTCTestCase):
    @defer.inlineCallbacks
    def test_data_channel(self):
        a, b = yield self.two_clients()
        yield self.call(b, "bob", PEER, "bob", "alice", True, "answer")
        yield self.call(a, "alice", PEER, "alice", "bob", False, "offer")
        yield self.wait_echoes(a, b)

    @defer.inlineCallbacks
    def test_glare_both_offer_at_once(self):
        a, b = yield self.two_clients()
        # Hold both offers in the server until both sides have made theirs,
        # so that each side receives an offer while its own is outstanding.
        transports = [self.registry.identities[p].conn.transport for p in ("alice", "bob")]
        for transport in transports:
            transport.pauseProducing()
        try:
            yield self.call(a, "alice", PEER, "alice", "bob", False, "negotiated")
            yield self.call(b, "bob", PEER, "bob", "alice", True, "negotiated")
            for driver in (a, b):
                yield self.until(driver, "window.rtc.pc.signalingState === 'have-local-offer'",
                                 "a local offer")
        finally:
            for transport in transports:
                transport.resumeProducing()
        yield self.wait_echoes(a, b)
        collisions = []
        for driver in (a, b):
            collisions.append((yield self.js(driver, "return window.rtc.collisions;")))
        self.assertEqual(collisions, [1, 1])

    @defer.inlineCallbacks
    def test_ice_restart_after_the_signaling_connection_came_back(self):
        """
        Alice's offer is lost with her connection (the server never reads
        it); once her client is back, connectPeer drops that offer and
        restarts ICE, and the call comes up.
        """
        a, b = yield self.two_clients()
        yield self.call(b, "bob", PEER, "bob", "alice", True, "answer")
        old = self.registry.identities["alice"].conn
        old.transport.pauseProducing()
        yield self.call(a, "alice", PEER, "alice", "bob", False, "offer")
        yield self.until(a, "window.rtc.pc.signalingState === 'have-local-offer'", "alice's offer")
        old.send(encode({"type": "server-shutdown", "reconnectAfterMs": 300}))
        old.close(1001, "server shutting down")
        yield self.wait_event(a, "alice", "state", condition="m.state === 'open' && m.reconnected")
        yield self.wait_echoes(a, b)
        offers = yield self.events(b, "bob", "offer")
        self.assertEqual(len(offers), 1)  # only the one after the reconnection arrived
