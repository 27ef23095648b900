#!/usr/bin/env python3
"""Issue 19's larger run: tests/e2e/test_dedupe_lb.py at 100,000 webhook ids instead of the
e2e suite's 1,500.

Three replicas behind a real HAProxy, the spool on, one Redis store shared by all; the Kafka
sink on one real broker (and, with --sink redis, the Redis sink on the store's server, the
claim and XADD in one script). Each id is sent 1 to 4 times to random replicas, some copies
together, some after the first was answered; a quarter into the load one replica is
SIGKILLed and started again on its spool, and the broker (or the Redis server) is killed for
30 % of the load's duration. Afterwards every id answered 200 must be in the topic exactly
once: the test's assertions, unchanged.

    python3 bench/dedupe_scale.py [--ids 100000] [--seconds 120] [--clients 24]
                                  [--sink kafka|redis] [--json FILE]

Prints the test's summary line (ids, requests, ids answered 200, messages, copies not
written, spooled) and its verdict; --json writes them with the command and the commit.
Needs what `make setup-test` installs (the test runner's venv, Kafka, Redis, HAProxy).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ids", type=int, default=100000)
    p.add_argument("--seconds", type=float, default=120.0, help="the load's duration")
    p.add_argument("--clients", type=int, default=24, help="client threads (keep-alive)")
    p.add_argument("--sink", choices=("kafka", "redis"), default="kafka")
    p.add_argument("--json")
    a = p.parse_args()
    py = os.path.join(ROOT, ".cache", "venv", "bin", "python3")
    if not os.path.exists(py):
        py = sys.executable
    env = dict(os.environ, ALMABRIDGE_DEDUPE_LB_IDS=str(a.ids),
               ALMABRIDGE_DEDUPE_LB_SECONDS=str(a.seconds),
               ALMABRIDGE_DEDUPE_LB_CLIENTS=str(a.clients))
    cmd = [py, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
           f"tests/e2e/test_dedupe_lb.py::test_each_id_answered_200_is_stored_once[{a.sink}]"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    line = next((ln for ln in out.splitlines() if re.match(r"^\d+ ids, \d+ requests", ln)), "")
    res = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "args": vars(a), "passed": proc.returncode == 0, "seconds": round(took, 1),
           "summary": line}
    print(line or out[-4000:])
    print(f"{'PASSED' if res['passed'] else 'FAILED'}: {a.ids} ids, sink {a.sink}, "
          f"{took:.0f} s in all")
    if not res["passed"]:
        fail = [ln for ln in out.splitlines() if ln.startswith("E ")]
        res["failure"] = fail[:20]
        print("\n".join(fail[:20]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
