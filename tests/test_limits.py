"""Tests for signaling.limits with a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from signaling.limits import (
    AbuseTracker,
    AddressCounter,
    RateDecision,
    RateLimiter,
    TokenBucket,
)


class TokenBucketTests(SynchronousTestCase):
    """Pacing with a token bucket."""

    def setUp(self):
        self.clock = Clock()
        self.bucket = TokenBucket(rate=10, burst=5, clock=self.clock)

    def test_burst_then_refuse(self):
        for _ in range(5):
            self.assertEqual(self.bucket.take(), 0.0)
        self.assertAlmostEqual(self.bucket.take(), 0.1)

    def test_refusal_takes_nothing(self):
        for _ in range(5):
            self.bucket.take()
        for _ in range(100):
            self.assertGreater(self.bucket.take(), 0)
        self.clock.advance(0.1)
        self.assertEqual(self.bucket.take(), 0.0)

    def test_retry_after_is_accurate(self):
        for _ in range(5):
            self.bucket.take()
        self.clock.advance(0.04)
        wait = self.bucket.take()
        self.assertAlmostEqual(wait, 0.06)
        self.clock.advance(wait - 0.001)
        self.assertGreater(self.bucket.take(), 0)
        self.clock.advance(0.001)
        self.assertEqual(self.bucket.take(), 0.0)

    def test_refill_capped_at_burst(self):
        self.clock.advance(3600)
        self.assertAlmostEqual(self.bucket.available, 5)
        for _ in range(5):
            self.assertEqual(self.bucket.take(), 0.0)
        self.assertGreater(self.bucket.take(), 0)

    def test_sustained_rate(self):
        allowed = 0
        for _ in range(1000):
            self.clock.advance(0.01)
            if self.bucket.take() == 0.0:
                allowed += 1
        # 10 s at 10/s plus the initial burst of 5.
        self.assertIn(allowed, range(104, 106))

    def test_take_many(self):
        self.assertEqual(self.bucket.take(5), 0.0)
        self.assertAlmostEqual(self.bucket.take(2), 0.2)

    def test_invalid(self):
        self.assertRaises(ValueError, self.bucket.take, 6)
        self.assertRaises(ValueError, self.bucket.take, 0)
        self.assertRaises(ValueError, TokenBucket, 0, 5, self.clock)
        self.assertRaises(ValueError, TokenBucket, 1, 0, self.clock)


class AbuseTrackerTests(SynchronousTestCase):
    """Closing connections that ignore RATE_LIMITED."""

    def setUp(self):
        self.clock = Clock()
        self.tracker = AbuseTracker(self.clock, max_refusals=3, window=10)

    def test_more_than_k_in_window_closes(self):
        self.assertEqual([self.tracker.refused() for _ in range(4)], [False] * 3 + [True])

    def test_spread_out_refusals_never_close(self):
        for _ in range(100):
            self.assertFalse(self.tracker.refused())
            self.clock.advance(3.5)

    def test_window_slides(self):
        for _ in range(3):
            self.tracker.refused()
        self.clock.advance(10)
        self.assertFalse(self.tracker.refused())
        self.assertFalse(self.tracker.refused())
        self.assertFalse(self.tracker.refused())
        self.assertTrue(self.tracker.refused())

    def test_zero_tolerance(self):
        self.assertTrue(AbuseTracker(self.clock, max_refusals=0).refused())

    def test_invalid(self):
        self.assertRaises(ValueError, AbuseTracker, self.clock, -1)
        self.assertRaises(ValueError, AbuseTracker, self.clock, 3, 0)


class RateLimiterTests(SynchronousTestCase):
    """The combined per-message decision."""

    def setUp(self):
        self.clock = Clock()
        self.limiter = RateLimiter(rate=1, burst=2, clock=self.clock, max_refusals=2, window=5)

    def test_sequence(self):
        self.assertEqual(self.limiter.check(), RateDecision(True))
        self.assertEqual(self.limiter.check(), RateDecision(True))
        first = self.limiter.check()
        self.assertEqual(first, RateDecision(False, 1.0, False))
        self.assertEqual(first.retry_after_ms, 1000)
        # Two ignored warnings are tolerated, the third closes.
        self.assertFalse(self.limiter.check().close)
        self.assertFalse(self.limiter.check().close)
        self.assertTrue(self.limiter.check().close)

    def test_polite_client_never_closed(self):
        refused = 0
        for _ in range(200):
            decision = self.limiter.check()
            if not decision.allowed:
                refused += 1
                self.assertFalse(decision.close)
                self.clock.advance(decision.retry_after_ms / 1000)
        self.assertGreater(refused, 50)

    def test_retry_after_ms_rounds_up(self):
        self.assertEqual(RateDecision(False, 0.0001).retry_after_ms, 1)
        self.assertEqual(RateDecision(False, 0.1).retry_after_ms, 100)
        self.assertEqual(RateDecision(False, 0.1005).retry_after_ms, 101)
        self.assertEqual(RateDecision(True).retry_after_ms, 0)


class AddressCounterTests(SynchronousTestCase):
    """Connection caps per source address."""

    def setUp(self):
        self.counter = AddressCounter()

    def test_limit(self):
        self.assertTrue(self.counter.acquire("10.0.0.1", 2))
        self.assertTrue(self.counter.acquire("10.0.0.1", 2))
        self.assertFalse(self.counter.acquire("10.0.0.1", 2))
        self.assertTrue(self.counter.acquire("10.0.0.2", 2))
        self.assertEqual(self.counter.count("10.0.0.1"), 2)
        self.assertEqual(self.counter.total, 3)
        self.counter.release("10.0.0.1")
        self.assertTrue(self.counter.acquire("10.0.0.1", 2))

    def test_refusal_not_counted(self):
        self.counter.acquire("a", 1)
        self.assertFalse(self.counter.acquire("a", 1))
        self.counter.release("a")
        self.assertEqual(self.counter.count("a"), 0)
        self.assertEqual(len(self.counter), 0)

    def test_no_empty_entries(self):
        for i in range(100):
            self.counter.acquire(f"10.0.0.{i}", None)
            self.counter.acquire(f"10.0.0.{i}", None)
        self.assertEqual(len(self.counter), 100)
        for i in range(100):
            self.counter.release(f"10.0.0.{i}")
            self.counter.release(f"10.0.0.{i}")
        self.assertEqual(len(self.counter), 0)
        self.assertEqual(self.counter._counts, {})

    def test_unknown_release_ignored(self):
        self.counter.release("nobody")
        self.assertEqual(len(self.counter), 0)
        self.assertEqual(self.counter.count("nobody"), 0)

    def test_unlimited(self):
        for _ in range(1000):
            self.assertTrue(self.counter.acquire("a", None))
        self.assertEqual(self.counter.count("a"), 1000)

    def test_invalid_limit(self):
        self.assertRaises(ValueError, self.counter.acquire, "a", 0)
        self.assertEqual(len(self.counter), 0)
