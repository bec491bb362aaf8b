"""Server-made message ids: unique in a process, across processes and after a fork."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.trial import unittest

from processes import environment
from signaling import message_ids
from signaling.message_ids import new_message_id


class MessageIdTests(unittest.TestCase):
    def test_ids_are_24_hex_digits_and_never_repeat(self):
        ids = [new_message_id() for _ in range(10000)]
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(all(re.fullmatch("[0-9a-f]{24}", i) for i in ids))

    def test_a_new_prefix_once_the_counter_runs_out(self):
        first = new_message_id()
        self.patch(message_ids, "_count", message_ids._COUNTER_LIMIT)
        after = new_message_id()
        self.assertNotEqual(after[:16], first[:16])
        self.assertEqual(after[16:], "00000000")

    def test_other_processes_make_other_ids(self):
        code = "from signaling.message_ids import new_message_id as n; print(n())"
        ids = {
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env=environment()).stdout.strip()
            for _ in range(3)
        }
        ids.add(new_message_id())
        self.assertEqual(len({i[:16] for i in ids}), 4)

    def test_a_forked_child_makes_other_ids(self):
        new_message_id()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.write(write, new_message_id().encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        child = os.read(read, 100).decode()
        os.close(read)
        self.assertNotEqual(child[:16], new_message_id()[:16])
