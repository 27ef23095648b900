#!/usr/bin/env python3
"""The test runner behind `make test`: every C unit test binary, then the end-to-end
suites (pytest) against the built daemon and real servers. Ends with one line CI reads:
`N passed, N failed, N skipped`."""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("ALMABRIDGE_BUILD", "build")


def run_unit():
    passed = failed = 0
    for exe in sorted(glob.glob(os.path.join(ROOT, BUILD, "tests", "*_test"))):
        name = os.path.basename(exe)
        t0 = time.time()
        try:
            p = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
            out, rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired:
            out, rc = "timed out after 300 s", -1
        m = re.search(r"^(\d+) passed, (\d+) failed", out, re.M)
        p_, f_ = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
        if rc != 0 and f_ == 0:
            f_ = 1  # a crash after the summary still fails
        passed += p_
        failed += f_
        status = "ok  " if f_ == 0 else "FAIL"
        print(f"{status} unit {name}: {p_} passed, {f_} failed ({time.time() - t0:.1f} s)")
        if f_:
            print("\n".join("    " + l for l in out.splitlines()[-40:]))
        sys.stdout.flush()
    return passed, failed, 0


def run_fuzz_replay():
    """Every seed corpus through its fuzz driver (ASan+UBSan), then a few seconds of random
    mutations each: a regression check of the parsers without libFuzzer. The drivers are
    always built with ASan+UBSan, so a sanitizer build's run (BUILD != build) skips them:
    the plain `make test` has run exactly the same binaries."""
    passed = failed = 0
    if BUILD != "build":
        print("skip fuzz replay and stress (same ASan+UBSan drivers as the plain run)")
        return passed, failed, 0
    for target, extra in (("replay", []), ("stress", ["STRESS_TIME=5"])):
        t0 = time.time()
        p = subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "tests", "fuzz"), target] + extra,
                           capture_output=True, text=True, timeout=600)
        ok = p.returncode == 0
        passed += ok
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} fuzz {target} ({time.time() - t0:.1f} s)")
        if not ok:
            print("\n".join("    " + l for l in (p.stdout + p.stderr).splitlines()[-40:]))
        sys.stdout.flush()
    return passed, failed, 0


def run_bench_smoke():
    """`make bench-smoke`: instructions per webhook under callgrind against the recorded
    baseline (bench/smoke-baseline.json). Skipped for sanitizer builds (valgrind cannot run
    them) and when valgrind is missing."""
    if BUILD != "build" or shutil.which("valgrind") is None:
        why = "sanitizer build" if BUILD != "build" else "valgrind not installed"
        print(f"skip bench-smoke ({why})")
        return 0, 0, 1
    t0 = time.time()
    p = subprocess.run(["make", "-s", "-C", ROOT, "bench-smoke"], capture_output=True,
                       text=True, timeout=600)
    ok = p.returncode == 0
    lines = [l for l in p.stdout.splitlines() if l.startswith("bench-smoke")]
    print(f"{'ok  ' if ok else 'FAIL'} bench-smoke ({time.time() - t0:.1f} s)")
    print("\n".join("    " + l for l in (lines if ok else (p.stdout + p.stderr).splitlines()[-30:])))
    sys.stdout.flush()
    return int(ok), int(not ok), 0


def run_e2e(args):
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "--junitxml", junit,
               os.path.join(ROOT, "tests", "e2e")] + args
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if not os.path.exists(junit):
            return 0, 1, 0
        suite = ET.parse(junit).getroot()
        suites = [suite] if suite.tag == "testsuite" else list(suite)
        tests = sum(int(s.get("tests", 0)) for s in suites)
        fails = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
        skips = sum(int(s.get("skipped", 0)) for s in suites)
        if rc not in (0, 5) and fails == 0:
            fails = 1
        return tests - fails - skips, fails, skips


def main():
    args = sys.argv[1:]
    unit_only = "--unit-only" in args
    args = [a for a in args if a != "--unit-only"]
    up, uf, _ = run_unit()
    fp, ff, _ = run_fuzz_replay()
    bp, bf, bs = run_bench_smoke()
    up, uf = up + fp + bp, uf + ff + bf
    ep = ef = es = 0
    if not unit_only:
        ep, ef, es = run_e2e(args)
    es += bs
    print(f"unit: {up} passed, {uf} failed; e2e: {ep} passed, {ef} failed, {es} skipped")
    print(f"{up + ep} passed, {uf + ef} failed, {es} skipped")
    sys.exit(1 if uf + ef else 0)


if __name__ == "__main__":
    main()
