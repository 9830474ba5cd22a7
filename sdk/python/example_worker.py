"""An example Quasicrystal task worker: refines an answer over iterations until it stops
changing (the agent's consistency check ends refining), checkpointing after each one.

    python3 example_worker.py SOCKET NAME [--die-after-checkpoint] [--stop-after-idle-s S]

With --die-after-checkpoint it kills itself (SIGKILL) after its first checkpoint, as a crash
would: the agent gives the task to the next worker, which resumes from that checkpoint.
"""

import os
import signal
import sys

from qs_worker import Worker


def main():
    path, name = sys.argv[1], sys.argv[2]
    die = "--die-after-checkpoint" in sys.argv
    idle = None
    if "--stop-after-idle-s" in sys.argv:
        idle = float(sys.argv[sys.argv.index("--stop-after-idle-s") + 1])
    worker = Worker(path, name)

    def step(claim, iteration, state):
        done = int(state or 0) + 1
        # The answer settles from the third pass on: twice the same, refining is over.
        result = "answer to %s" % claim["payload"] if done >= 3 else "draft %d" % done
        return float(done), result, str(done)

    if die:
        claim = None
        while claim is None:
            claim = worker.claim(0.5)
        score, result, state = step(claim, claim["iteration"], claim.get("state"))
        worker.checkpoint(claim, claim["iteration"] + 1, state)
        print("checkpointed %s" % claim["task"], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    worker.run(step, stop_after_idle_s=idle)


if __name__ == "__main__":
    main()
