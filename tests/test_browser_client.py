"""
The JavaScript client library (``/client/signaling-client.js``) in headless
Chromium against the real server: relaying, reconnection after a restart,
offline delivery, ``server-shutdown`` delays, liveness, takeover and
authentication refusals, the send queue.
"""

from __future__ import annotations

import jwt
from twisted.internet import defer

from browser import BrowserTestCase
from helpers import pause, wait_for
from processes import free_port
from signaling.messages import encode

#: Fast reconnection for tests (the defaults are for the internet).
FAST = {"reconnect": {"initialDelayMs": 100, "maxDelayMs": 400}}


class RelayTests(BrowserTestCase):
    config = {"rate_limit": 0}

    @defer.inlineCallbacks
    def pages(self, *peer_ids, **options):
        """One page per peer id, each in its own browser, with a connected client."""
        drivers = []
        for number, peer_id in enumerate(peer_ids):
            driver = yield self.browser(("first", "second")[number])
            yield self.open(driver, self.http + "/health")
            yield self.make_client(driver, peer_id, **options)
            yield self.call(driver, peer_id, "return client.connect();")
            drivers.append(driver)
        return drivers

    @defer.inlineCallbacks
    def test_directed_and_room_messages_and_peers(self):
        a, b = yield self.pages("alice", "bob", deviceType="browser", deviceInfo={"name": "tab"})
        yield self.call(a, "alice", "client.send('bob', {type: 'message', payload: {text: 'hi bob'}});")
        [message] = yield self.wait_event(b, "bob", "message")
        self.assertEqual((message["from"], message["payload"]), ("alice", {"text": "hi bob"}))

        joined = yield self.call(b, "bob", "return client.joinRoom('lobby');")
        self.assertEqual((joined["type"], joined["members"]), ("join-success", []))
        joined = yield self.call(a, "alice", "return client.joinRoom('lobby');")
        self.assertEqual(joined["members"], ["bob"])
        yield self.call(a, "alice", "client.sendToRoom('lobby', {type: 'chat', message: 'hello room'});")
        [chat] = yield self.wait_event(b, "bob", "chat")
        self.assertEqual((chat["sender"], chat["roomId"], chat["message"]),
                         ("alice", "lobby", "hello room"))
        yield self.call(a, "alice", "client.sendToRoom('lobby', {type: 'chat', message: 'only bob'}, {to: 'bob'});")
        yield self.wait_event(b, "bob", "chat", condition="m.message === 'only bob'")

        peers = yield self.call(a, "alice", "return client.getPeers();")
        self.assertEqual([(p["peerId"], p["deviceType"], p["deviceInfo"]) for p in peers["peers"]],
                         [("bob", "browser", {"name": "tab"})])
        page = yield self.call(a, "alice", "return client.getPeers({limit: 1});")
        self.assertEqual((page["count"], page["total"]), (1, 1))

        # An error reply rejects the request's promise with its code.
        error = yield self.call(a, "alice", """
            return client.joinRoom('x'.repeat(200)).then(() => 'joined', (e) => [e.name, e.code]);
        """)
        self.assertEqual(error, ["SignalingError", "INVALID_FIELD"])
        left = yield self.call(a, "alice", "return client.leaveRoom('lobby');")
        self.assertEqual(left["type"], "leave-success")
        yield self.wait_event(b, "bob", "user-left", condition="m.userId === 'alice'")

    @defer.inlineCallbacks
    def test_server_restart_both_reconnect_rejoin_and_relay(self):
        port = free_port()
        self.start_server(port=port, db="offline.sqlite", reconnect_jitter=0.3)
        a, b = yield self.pages("alice", "bob", **FAST)
        for driver, peer_id in ((a, "alice"), (b, "bob")):
            yield self.call(driver, peer_id, "return client.joinRoom('standup');")

        yield self.service.stopService()
        for driver, peer_id in ((a, "alice"), (b, "bob")):
            [shutdown] = yield self.wait_event(driver, peer_id, "server-shutdown")
            self.assertLessEqual(shutdown["reconnectAfterMs"], 300)
            yield self.wait_event(driver, peer_id, "state", condition="m.state === 'reconnecting'")
        self.start_server(port=port, db="offline.sqlite")

        for driver, peer_id in ((a, "alice"), (b, "bob")):
            yield self.wait_event(driver, peer_id, "state",
                                  condition="m.state === 'open' && m.reconnected")
        # Registered again and back in the room, without the page doing anything.
        yield wait_for(lambda: set(self.registry.rooms.get("standup", {})) == {"alice", "bob"},
                       "both back in the room")
        self.assertEqual(set(self.registry.peers), {"alice", "bob"})
        yield self.call(a, "alice", "client.sendToRoom('standup', {type: 'chat', message: 'after'});")
        [chat] = yield self.wait_event(b, "bob", "chat")
        self.assertEqual((chat["sender"], chat["message"]), ("alice", "after"))
        yield self.call(b, "bob", "client.send('alice', {type: 'message', payload: 'back'});")
        yield self.wait_event(a, "alice", "message", condition="m.payload === 'back'")

    def shut_down_one(self, peer_id, after_ms):
        """What the server sends on shutdown, to one client only."""
        connection = self.registry.identities[peer_id].conn
        connection.send(encode({"type": "server-shutdown", "reconnectAfterMs": after_ms}))
        connection.close(1001, "server shutting down")

    @defer.inlineCallbacks
    def test_shutdown_delay_then_offline_message_and_ack(self):
        [page] = yield self.pages("phone", ack=True, **FAST)
        sender = yield self.register("desktop")
        yield self.call(page, "phone", """
            window.handled = [];
            client.on('offline-message', async (m) => {
              await new Promise((resolve) => setTimeout(resolve, 200));
              window.handled.push(m.messageId);
            });
        """)
        self.shut_down_one("phone", 1500)
        [reconnecting] = yield self.wait_event(page, "phone", "state",
                                               condition="m.state === 'reconnecting'")
        self.assertEqual((reconnecting["code"], reconnecting["delayMs"]), (1001, 1500))

        sender.send({"type": "message", "to": "phone", "messageId": "m-1", "payload": "while away"})
        stored = yield sender.expect("peer-offline", skip=("peer-status",))
        self.assertEqual((stored["messageId"], stored["queued"]), ("m-1", True))

        [offline] = yield self.wait_event(page, "phone", "offline-message")
        self.assertEqual((offline["messageId"], offline["originalMessage"]["payload"],
                          offline["originalMessage"]["from"]), ("m-1", "while away", "desktop"))
        [opened] = yield self.wait_event(page, "phone", "state",
                                         condition="m.state === 'open' && m.reconnected")
        # The wait honoured reconnectAfterMs (a backoff alone would be under 100 ms).
        self.assertGreaterEqual(opened["at"] - reconnecting["at"], 1500 - 50)
        # Acknowledged once the handler finished: the store lets go of it.
        yield wait_for(lambda: self.store.count == 0, "the acknowledgement", timeout=10)
        handled = yield self.js(page, "return window.handled;")
        self.assertEqual(handled, ["m-1"])

    @defer.inlineCallbacks
    def test_send_queue_while_reconnecting_is_bounded(self):
        [page] = yield self.pages("phone", maxQueue=3, **FAST)
        other = yield self.register("desktop")
        self.shut_down_one("phone", 1500)
        yield self.wait_event(page, "phone", "state", condition="m.state === 'reconnecting'")
        outcome = yield self.call(page, "phone", """
            const results = [];
            for (let i = 0; i < 4; i++) {
              try { client.send('desktop', {type: 'message', payload: i}); results.push(client.queued); }
              catch (e) { results.push(e.code); }
            }
            return results;
        """)
        self.assertEqual(outcome, [1, 2, 3, "SEND_QUEUE_FULL"])
        received = []
        while len(received) < 3:
            message = yield other.expect("message", timeout=10, skip=("peer-status",))
            received.append(message["payload"])
        self.assertEqual(received, [0, 1, 2])

    @defer.inlineCallbacks
    def test_close_reports_what_was_still_queued(self):
        [page] = yield self.pages("phone", **FAST)
        self.shut_down_one("phone", 5000)
        yield self.wait_event(page, "phone", "state", condition="m.state === 'reconnecting'")
        result = yield self.call(page, "phone", """
            client.send('desktop', {type: 'message', payload: 'never sent'});
            client.close();
            let after;
            try { client.send('desktop', {type: 'message'}); } catch (e) { after = e.code; }
            return [client.state, after];
        """)
        self.assertEqual(result, ["closed", "CLOSED"])
        [undelivered] = yield self.wait_event(page, "phone", "undelivered")
        self.assertEqual([m["payload"] for m in undelivered["messages"]], ["never sent"])

    @defer.inlineCallbacks
    def test_ping_when_silent_and_reconnect_when_no_pong(self):
        [page] = yield self.pages("phone", pingIntervalMs=200, pongTimeoutMs=400, **FAST)
        first = self.registry.identities["phone"]
        # The page pings a silent line, and the server's pongs keep it up.
        yield self.wait_event(page, "phone", "pong", count=2)
        self.assertIs(self.registry.identities["phone"], first)
        # A server that stops reading (a dead link) gets no more pings answered.
        first.conn.transport.pauseProducing()
        [lost] = yield self.wait_event(page, "phone", "connection-error",
                                       condition="m.error === 'no pong from the server'")
        yield self.wait_event(page, "phone", "state", condition="m.state === 'open' && m.reconnected")
        self.assertIsNot(self.registry.identities["phone"], first)
        first.conn.transport.resumeProducing()

    @defer.inlineCallbacks
    def test_replaced_is_final(self):
        [page] = yield self.pages("phone", **FAST)
        yield self.register("phone")  # another device takes the id over
        [replaced] = yield self.wait_event(page, "phone", "replaced")
        self.assertEqual(replaced["code"], 4001)
        yield self.wait_event(page, "phone", "state", condition="m.state === 'closed'")
        total = self.hub.stats()["connectionsTotal"]
        yield pause(0.6)  # longer than the largest backoff of FAST
        self.assertEqual(self.hub.stats()["connectionsTotal"], total)
        state = yield self.call(page, "phone", "return client.state;")
        self.assertEqual(state, "closed")


SECRET = "s" * 64


class AuthRefusalTests(BrowserTestCase):
    config = {"auth_secret": SECRET, "auth_required": True}

    @defer.inlineCallbacks
    def test_refused_token_is_final(self):
        driver = yield self.browser()
        yield self.open(driver, self.http + "/health")
        yield self.make_client(driver, "phone", token="not-a-token", **FAST)
        error = yield self.call(driver, "phone",
                                "return client.connect().then(() => 'connected', (e) => e.code);")
        self.assertEqual(error, "UNAUTHORIZED")
        [event] = yield self.wait_event(driver, "phone", "unauthorized")
        self.assertEqual(event["code"], "UNAUTHORIZED")
        total = self.hub.stats()["connectionsTotal"]
        yield pause(0.6)
        self.assertEqual(self.hub.stats()["connectionsTotal"], total)

        # The control: a good token, as a function called for each connection.
        registered = yield self.js(driver, """
            const client = new window.lib.SignalingClient(location.origin,
              {peerId: 'tablet', token: () => Promise.resolve(arguments[0])});
            return client.connect();
        """, jwt.encode({"sub": "tablet"}, SECRET, algorithm="HS256"))
        self.assertEqual(registered["peerId"], "tablet")
