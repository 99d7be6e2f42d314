"""A stand-in for `python -m ssl_jax.main` in tests/test_launch.py (no JAX).

Run as `python -m tests.fake_worker --coordinator_address=... --num_processes=N --process_id=I
[behaviour flags]`, it writes its pid, argv and environment to DIR/process_I.json (atomically,
once its SIGTERM handler is in place), then does what its flags say for its process id:
  --out_dir=DIR         where process_I.json (and process_I.term on SIGTERM) go
  --exit=I:CODE         process I exits with CODE at once (repeatable)
  --sleep=SECONDS       every other process sleeps this long, then exits 0
  --sync                first wait until every process has written its record (so that all are
                        up, their SIGTERM handlers in place, before any exits)
  --term_exit=CODE      on SIGTERM: write process_I.term and exit CODE (default: die of SIGTERM;
                        `ignore`: write process_I.term and go on, as a process stuck in a step)
"""
import json
import os
import signal
import sys
import time


def main(argv):
    opts, exits = {}, {}
    for arg in argv:
        key, _, value = arg.lstrip("-").partition("=")
        if key == "exit":
            pid, code = value.split(":")
            exits[int(pid)] = int(code)
        else:
            opts[key] = value
    process_id = int(opts["process_id"])
    out_dir = opts["out_dir"]
    if "term_exit" in opts:
        def on_term(signum, frame):
            open(os.path.join(out_dir, f"process_{process_id}.term"), "w").close()
            if opts["term_exit"] == "ignore":
                return
            print(f"fake worker {process_id}: SIGTERM, exiting {opts['term_exit']}", flush=True)
            sys.exit(int(opts["term_exit"]))
        signal.signal(signal.SIGTERM, on_term)
    # Written once the SIGTERM handler is in place: a test may signal as soon as it sees it.
    path = os.path.join(out_dir, f"process_{process_id}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(pid=os.getpid(), argv=argv, XLA_FLAGS=os.environ.get("XLA_FLAGS"),
                       JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS")), f)
    os.replace(path + ".tmp", path)
    print(f"fake worker {process_id} of {opts['num_processes']} started", flush=True)
    if "sync" in opts:
        records = [os.path.join(out_dir, f"process_{i}.json") for i in range(int(opts["num_processes"]))]
        deadline = time.time() + 30
        while not all(map(os.path.exists, records)) and time.time() < deadline:
            time.sleep(0.02)
    if process_id in exits:
        sys.exit(exits[process_id])
    time.sleep(float(opts.get("sleep", "0")))


if __name__ == "__main__":
    main(sys.argv[1:])
