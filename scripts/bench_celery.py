"""The Celery column of `qs bench tasks`: Celery on a Redis broker (and result backend),
acks_late on, a no-op task, --concurrency prefork worker processes; `--clients` threads
submit `--tasks` tasks and the driver waits for every result. Prints one JSON object:
completions per second (first submission to last completion) and submit-to-complete
latency p50/p99 in ms (submission to the moment the task's body ran and returned).

Exits 3, saying why, when celery, redis (PyPI) or redis-server (Debian) is missing.
"""

import argparse
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

APP = '''
import os, time
from celery import Celery
app = Celery("bench", broker=os.environ["QS_BENCH_BROKER"], backend=os.environ["QS_BENCH_BROKER"])
app.conf.task_acks_late = True
app.conf.broker_connection_retry_on_startup = True

@app.task
def noop(i):
    return time.time()
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * q))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    # SIGTERM (the bench's bound) ends the run through `finally`, which stops what it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        import celery  # noqa: F401
        import redis  # noqa: F401
    except ImportError as e:
        print("PyPI celery and redis are needed: %s" % e)
        sys.exit(3)
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server (Debian redis-server) is needed")
        sys.exit(3)
    port = free_port()
    broker = "redis://127.0.0.1:%d/0" % port
    os.environ["QS_BENCH_BROKER"] = broker
    with open("tasks_app.py", "w") as f:
        f.write(APP)
    sys.path.insert(0, os.getcwd())
    procs = []
    try:
        procs.append(subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True))
        deadline = time.monotonic() + 30
        while True:  # the broker listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks_app", "worker", "--pool", "prefork",
             "--concurrency", str(a.workers), "--loglevel", "WARNING", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        import tasks_app
        tasks_app.noop.delay(-1).get(timeout=60)  # the worker is up and warm
        n = a.tasks
        submitted = [0.0] * n
        results = [None] * n
        nxt = iter(range(n))
        lock = threading.Lock()

        def client():
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                submitted[i] = time.time()
                results[i] = tasks_app.noop.delay(i)

        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        completed = [r.get(timeout=300) for r in results]
        lat = [(c - s) * 1000.0 for s, c in zip(submitted, completed)]
        print(json.dumps({
            "completions_per_s": n / (max(completed) - min(submitted)),
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99),
        }), flush=True)
        # The results let go while their backend still answers.
        results.clear()
        gc.collect()
    finally:
        # The worker (its own process group, with its pool) first, then the broker.
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            except ProcessLookupError:
                p.wait()


if __name__ == "__main__":
    main()
