"""A Quasicrystal task worker: the worker protocol over the agent's Unix socket.

One file, the standard library only. A frame is a 4-byte big-endian length, then that many
bytes of a JSON object with an "op". The worker registers (its name, the models it has
warm), then claims one iteration of a task at a time, reports each iteration (a score and
a hash of its result), may checkpoint, and completes or fails the task under the attempt
(fencing token) its claim gave it: the agent refuses what a superseded attempt says.

    from qs_worker import Worker

    def step(task, iteration, state):
        # one iteration of the work; returns (score, result, new_state)
        ...

    Worker("/var/lib/qs/tasks.sock", "summarizer").run(step)

A worker may also be an agent of the mesh (seed 001): it joins with its capabilities, then
takes what the mesh sends it and answers each operation READY (1) or CONFLICT (-1):

    def handle(envelope):
        # envelope: verb, payload, op, target_arrival_ms, ...; returns the answer, or
        # raises MeshConflict({"type": "data-contradiction", ...})
        return "a1b2c3d4"

    Worker("/var/lib/qs/tasks.sock", "observer-1").serve_mesh(handle, ["gpu"])
"""

import hashlib
import json
import socket
import struct
import time

MAX_FRAME = 1 << 20


class Refused(Exception):
    """The agent refused a request (a superseded attempt, an ended task, a full queue)."""


class MeshConflict(Exception):
    """Raised by a mesh handler: the envelope conflicts with what this agent holds. detail is
    one of the protocol's conflicts, e.g. {"type": "data-contradiction", "expected": ...,
    "received": ..., "affects_agents": 1}."""

    def __init__(self, detail):
        super().__init__(detail.get("type", "conflict"))
        self.detail = detail


READY, CONFLICT = 1, -1


class Worker:
    def __init__(self, path, name, models=(), heartbeat_s=None):
        """heartbeat_s: when given, a promise of a frame at least that often (heartbeat()
        or progress() during long steps); silent for three of them, the agent takes this
        worker for hung and fails its attempts."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.name = name
        register = {"op": "register", "worker": name, "models": list(models)}
        if heartbeat_s is not None:
            register["heartbeat_ms"] = int(heartbeat_s * 1000)
        reply = self.call(register)
        self.node = reply.get("node")

    def close(self):
        self.sock.close()

    def _send(self, obj):
        body = json.dumps(obj).encode()
        if len(body) > MAX_FRAME:
            raise ValueError("a frame of %d bytes; at most %d" % (len(body), MAX_FRAME))
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _read(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the agent closed the connection")
            data += chunk
        return data

    def call(self, obj):
        """Sends one request and reads its answer."""
        self._send(obj)
        (n,) = struct.unpack(">I", self._read(4))
        if n > MAX_FRAME:
            raise ConnectionError("the agent sent a frame of %d bytes" % n)
        reply = json.loads(self._read(n))
        if reply.get("op") == "refused":
            raise Refused(reply.get("reason", ""))
        return reply

    def claim(self, wait_s=0.0):
        """The next iteration of a task, waiting up to wait_s (at most 60) for one: a dict
        with task, attempt, iteration, payload, model and the last checkpoint's state; None
        when none came; "soft-stop" when the agent asks this worker to stop claiming."""
        wait_ms = int(min(max(wait_s, 0.0), 60.0) * 1000)
        reply = self.call({"op": "claim", "wait_ms": wait_ms})
        if reply["op"] == "task":
            return reply
        if reply["op"] == "soft-stop":
            return "soft-stop"
        return None

    def report(self, claim, score, result):
        """Reports an iteration; True when refining is over (complete the task next)."""
        digest = hashlib.sha256(result.encode()).digest()
        result_hash = struct.unpack(">Q", digest[:8])[0]
        reply = self.call({
            "op": "report", "task": claim["task"], "attempt": claim["attempt"],
            "score": float(score), "result_hash": result_hash,
        })
        return reply["next"] == "finish"

    def checkpoint(self, claim, iteration, state):
        self.call({
            "op": "checkpoint", "task": claim["task"], "attempt": claim["attempt"],
            "iteration": iteration, "state": state,
        })

    def complete(self, claim, result):
        self.call({"op": "complete", "task": claim["task"], "attempt": claim["attempt"],
                   "result": result})

    def heartbeat(self):
        self.call({"op": "heartbeat"})

    def progress(self, claim, fraction, note=""):
        """How far the iteration under way is, 0 to 1 (shown by qs task show)."""
        self.call({"op": "progress", "task": claim["task"], "attempt": claim["attempt"],
                   "fraction": float(fraction), "note": note})

    def effect(self, claim, key, f):
        """Runs the side effect f(token) of the claimed task, named key, unless an attempt
        of the task already ran it to the end (the agent keeps each task's finished effects
        with its record). token ("TASK/KEY") is stable across attempts, for the outside
        system to drop the repeat that a crash after f and before the agent heard of it
        would cause. Returns whether f ran."""
        base = {"task": claim["task"], "attempt": claim["attempt"], "key": key}
        if self.call(dict(base, op="effect"))["done"]:
            return False
        f("%s/%s" % (claim["task"], key))
        self.call(dict(base, op="effect-done"))
        return True

    def fail(self, claim, reason):
        self.call({"op": "fail", "task": claim["task"], "attempt": claim["attempt"],
                   "reason": reason})

    def run(self, step, idle_s=0.5, stop_after_idle_s=None):
        """Claims and works tasks until soft-stopped (or idle for `stop_after_idle_s`).
        `step(claim, iteration, state)` returns (score, result, state); each iteration is
        reported and checkpointed, and the task completed when refining is over."""
        idle_since = time.monotonic()
        while True:
            claim = self.claim(idle_s)
            if claim == "soft-stop":
                return
            if claim is None:
                if stop_after_idle_s is not None and time.monotonic() - idle_since > stop_after_idle_s:
                    return
                continue
            idle_since = time.monotonic()
            iteration = claim["iteration"]
            try:
                score, result, state = step(claim, iteration, claim.get("state"))
            except Exception as e:  # the task's own failure, not the worker's
                self.fail(claim, "%s: %s" % (type(e).__name__, e))
                continue
            self.checkpoint(claim, iteration + 1, state)
            if self.report(claim, score, result):
                self.complete(claim, result)

    def mesh_join(self, capabilities=()):
        """Joins the mesh as an agent, under this worker's name; returns the agent's id."""
        return self.call({"op": "mesh-join", "capabilities": list(capabilities)})["agent"]

    def mesh_poll(self, wait_s=0.0):
        """The next envelope the mesh sends this agent (a dict: op, verb, payload,
        content_hash, target_arrival_ms, ttl_ms, priority, requires, ...), waiting up to
        wait_s (at most 60); None when none came."""
        wait_ms = int(min(max(wait_s, 0.0), 60.0) * 1000)
        reply = self.call({"op": "mesh-poll", "wait_ms": wait_ms})
        return reply["envelope"] if reply["op"] == "mesh" else None

    def mesh_answer(self, envelope, answer="", conflict=None):
        """Answers an envelope: READY with the answer, or CONFLICT with what conflicts."""
        request = {"op": "mesh-answer", "operation": envelope["op"],
                   "state": READY if conflict is None else CONFLICT, "answer": answer}
        if conflict is not None:
            request["conflict"] = conflict
        self.call(request)

    def serve_mesh(self, handle, capabilities=(), idle_s=0.5, stop=None, on_join=None):
        """Joins the mesh (then calls on_join(agent_id), if given) and answers what it sends
        until stop() is true (never, by default). An envelope whose payload does not match
        its content hash is answered CONFLICT (an integrity failure) without calling handle;
        a readiness probe (verb "probe": the lead measures how fast this agent answers while
        it joins) is answered READY at once, without calling handle; handle(envelope)
        returns the answer, or raises MeshConflict."""
        agent = self.mesh_join(capabilities)
        if on_join is not None:
            on_join(agent)
        while stop is None or not stop():
            envelope = self.mesh_poll(idle_s)
            if envelope is None:
                continue
            actual = hashlib.sha256(envelope["payload"].encode()).hexdigest()
            if actual != envelope["content_hash"]:
                self._answer_once(envelope, conflict={
                    "type": "hash-mismatch", "expected": envelope["content_hash"],
                    "received": actual})
                continue
            if envelope.get("verb") == "probe":
                self._answer_once(envelope)
                continue
            try:
                answer = handle(envelope)
            except MeshConflict as c:
                self._answer_once(envelope, conflict=c.detail)
                continue
            self._answer_once(envelope, answer=answer or "")

    def _answer_once(self, envelope, answer="", conflict=None):
        """Answers, and once more if the agent was too busy to take it; an answer the agent
        refuses otherwise (the operation forgotten, an answer too long) is dropped: the
        operation counts it in transit."""
        for _ in range(2):
            try:
                self.mesh_answer(envelope, answer=answer, conflict=conflict)
                return
            except Refused as e:
                if "answer again" not in str(e):
                    return
