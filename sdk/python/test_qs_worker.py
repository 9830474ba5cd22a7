"""Unit tests of qs_worker.py against a scripted agent on a real Unix socket (a double of
the agent's side; the real agent drives the SDK in crates/qs/tests/task_workers.rs).

    python3 -m unittest test_qs_worker     (from sdk/python)
"""

import json
import os
import socket
import struct
import tempfile
import threading
import unittest

import hashlib

from qs_worker import MeshConflict, Refused, Worker


def serve(path, answers, seen):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)

    def run():
        conn, _ = listener.accept()
        conn.settimeout(10)
        for answer in answers:
            head = conn.recv(4, socket.MSG_WAITALL)
            if len(head) < 4:
                break
            (n,) = struct.unpack(">I", head)
            seen.append(json.loads(conn.recv(n, socket.MSG_WAITALL)))
            body = json.dumps(answer).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)
        conn.close()
        listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


TASK = {"op": "task", "task": "n1-t1", "attempt": 7, "iteration": 0, "payload": "p",
        "model": None, "state": None}


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "tasks.sock")
        self.seen = []

    def tearDown(self):
        self.dir.cleanup()

    def test_run_checkpoints_reports_and_completes_under_the_attempt(self):
        t = serve(self.path, [
            {"op": "registered", "node": "n1"}, TASK, {"op": "ok"},
            {"op": "next", "next": "finish"}, {"op": "ok"}, {"op": "soft-stop"},
        ], self.seen)
        w = Worker(self.path, "w")
        w.run(lambda claim, it, state: (1.0, "r", "s1"), idle_s=0.25)
        w.close()
        t.join()
        self.assertEqual([r["op"] for r in self.seen],
                         ["register", "claim", "checkpoint", "report", "complete", "claim"])
        self.assertEqual(self.seen[1]["wait_ms"], 250)
        self.assertTrue(all(r["attempt"] == 7 for r in self.seen[2:5]))

    def test_a_refusal_raises_with_the_reason(self):
        t = serve(self.path, [{"op": "registered", "node": "n1"},
                              {"op": "refused", "reason": "attempt 7 was superseded"}], self.seen)
        w = Worker(self.path, "w")
        with self.assertRaisesRegex(Refused, "superseded"):
            w.complete(TASK, "late")
        w.close()
        t.join()

    def test_an_effect_already_run_is_not_run_again(self):
        t = serve(self.path, [{"op": "registered", "node": "n1"}, {"op": "effect", "done": False},
                              {"op": "ok"}, {"op": "effect", "done": True}], self.seen)
        w = Worker(self.path, "w")
        tokens = []
        self.assertTrue(w.effect(TASK, "mail", tokens.append))
        self.assertFalse(w.effect(TASK, "mail", tokens.append))
        self.assertEqual(tokens, ["n1-t1/mail"])
        w.close()
        t.join()
        self.assertEqual(self.seen[2]["op"], "effect-done")

    def test_serve_mesh_answers_ready_and_conflicts_and_checks_the_content_hash(self):
        def envelope(op, payload, digest=None, verb="observe"):
            digest = digest or hashlib.sha256(payload.encode()).hexdigest()
            return {"op": "mesh", "envelope": {"op": op, "verb": verb, "payload": payload,
                                               "content_hash": digest}}
        t = serve(self.path, [
            {"op": "registered", "node": "n1"}, {"op": "mesh-joined", "agent": 42},
            envelope(0, "", verb="probe"), {"op": "ok"},
            envelope(1, "status"), {"op": "ok"},
            envelope(2, "expect:b"), {"op": "ok"},
            envelope(3, "tampered", digest="00"), {"op": "ok"},
            {"op": "none"},
        ], self.seen)
        w = Worker(self.path, "w")
        joined = []

        def handle(e):
            self.assertNotEqual(e["verb"], "probe", "a probe is answered without the handler")
            if e["payload"].startswith("expect:"):
                raise MeshConflict({"type": "data-contradiction", "expected": "b",
                                    "received": "a", "affects_agents": 1})
            return "a"
        w.serve_mesh(handle, ["gpu"], idle_s=0.1, on_join=joined.append,
                     stop=lambda: len(self.seen) >= 10)
        w.close()
        t.join()
        self.assertEqual(joined, [42])
        self.assertEqual(self.seen[1], {"op": "mesh-join", "capabilities": ["gpu"]})
        answers = [r for r in self.seen if r["op"] == "mesh-answer"]
        self.assertEqual([(a["operation"], a["state"]) for a in answers],
                         [(0, 1), (1, 1), (2, -1), (3, -1)])
        self.assertEqual(answers[0]["answer"], "")
        self.assertEqual(answers[1]["answer"], "a")
        self.assertEqual(answers[2]["conflict"]["type"], "data-contradiction")
        self.assertEqual(answers[3]["conflict"]["type"], "hash-mismatch")
        self.assertEqual(self.seen[2], {"op": "mesh-poll", "wait_ms": 100})


if __name__ == "__main__":
    unittest.main()
