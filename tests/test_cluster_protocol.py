"""
The protocol's black-box test classes on a cluster of 3 nodes sharing one
Redis: once with every client on the same node, once with the clients
spread over the nodes (client k on node k mod 3), so that every exchange of
those tests also runs between different nodes.
"""

from __future__ import annotations

import test_errors
import test_hardening
import test_offline
import test_peers
import test_rooms
import test_security
from cluster_nodes import ClusterServerTestCase


# -- every client on one node -------------------------------------------------


class SameNode(ClusterServerTestCase):
    spread = False


class RoomTestsSameNode(SameNode, test_rooms.RoomTests):
    pass


class RoomLimitTestsSameNode(SameNode, test_rooms.RoomLimitTests):
    pass


class RegisterTestsSameNode(SameNode, test_peers.RegisterTests):
    pass


class DirectedTestsSameNode(SameNode, test_peers.DirectedTests):
    pass


class TakeoverTestsSameNode(SameNode, test_peers.TakeoverTests):
    pass


class OfflineTestsSameNode(SameNode, test_offline.OfflineTests):
    pass


class ErrorTestsSameNode(SameNode, test_errors.ErrorTests):
    pass


class HS256TestsSameNode(SameNode, test_security.HS256Tests):
    pass


# -- clients spread over the nodes ------------------------------------------------


class Spread(ClusterServerTestCase):
    spread = True


class RoomTestsSpread(Spread, test_rooms.RoomTests):
    pass


class RoomLimitTestsSpread(Spread, test_rooms.RoomLimitTests):
    pass


class RegisterTestsSpread(Spread, test_peers.RegisterTests):
    pass


class DirectedTestsSpread(Spread, test_peers.DirectedTests):
    pass


class TakeoverTestsSpread(Spread, test_peers.TakeoverTests):
    pass


class OfflineTestsSpread(Spread, test_offline.OfflineTests):
    pass


class ErrorTestsSpread(Spread, test_errors.ErrorTests):
    pass


class HS256TestsSpread(Spread, test_security.HS256Tests):
    pass


class AuthRequiredTestsSpread(Spread, test_security.AuthRequiredTests):
    pass


class SpoofingTestsSpread(Spread, test_hardening.SpoofingTests):
    pass


class TakeoverGrantTestsSpread(Spread, test_hardening.TakeoverGrantTests):
    pass


class LargeMessageTestsSpread(Spread, test_hardening.LargeMessageTests):
    pass


class LargeRoomTestsSpread(Spread, test_hardening.LargeRoomTests):
    pass
