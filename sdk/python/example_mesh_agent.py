"""An example agent of the mesh (seed 001) over the worker protocol: it joins with its
capabilities and answers what the mesh sends it. An observation is answered with its context;
a payload "expect:VALUE" states a fact every agent should hold, and one whose context differs
answers CONFLICT (a value mismatch).

    python3 example_mesh_agent.py SOCKET NAME CONTEXT [CAPABILITY ...]

It prints "joined" once it is an agent of the mesh, then one line per operation answered.
"""

import sys

from qs_worker import MeshConflict, Worker


def main():
    path, name, context = sys.argv[1], sys.argv[2], sys.argv[3]
    capabilities = sys.argv[4:]
    worker = Worker(path, name, heartbeat_s=5)

    def handle(envelope):
        payload = envelope["payload"]
        if payload.startswith("expect:") and payload[len("expect:"):] != context:
            print("conflict %d" % envelope["op"], flush=True)
            raise MeshConflict({"type": "data-contradiction", "expected": payload[7:],
                                "received": context, "affects_agents": 1})
        print("answered %d" % envelope["op"], flush=True)
        return context if envelope["verb"] == "observe" else ""

    worker.serve_mesh(handle, capabilities, on_join=lambda agent: print("joined", flush=True))


if __name__ == "__main__":
    main()
