"""Set-up where users start (run by tests/containers/run.sh, `make test-containers`):

* debian:12-slim (the local stand-in: mmdebstrap minbase without /usr/share/man, docs and
  locales, as the real slim image), in an ordinary, unprivileged container: the README's
  first command, `make setup-test` (the JRE's post-install needs /usr/share/man/man1), the
  build, the unit tests and a short subset of the end-to-end tests through the suite's own
  runner. The disk-full test needs to mount a tmpfs, which the container may not: it is
  skipped, the reason is shown, and the runner's last line counts it.
* a debootstrap minbase (no procps, no python3): the README's first command, `make setup`,
  the build, the unit tests that need no server, `make install` with DESTDIR.

The checkout goes in as a tar of the tracked and new files (no build or cache directory).
Egress from the test machines may pass through a TLS-inspecting proxy whose CA the host
trusts (/usr/local/share/ca-certificates): it is handed to the container the same way, and
pip is pointed at the system store. Each test prints the time it took."""
import os
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MINBASE = os.environ.get("ALMABRIDGE_MINBASE_IMAGE", "almabridge-test/minbase:bookworm")
EXTRA_CA = "/usr/local/share/ca-certificates"


def readme_first_command():
    """The command the README's quick start gives before anything else."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"## Quick start.*?`(apt-get update && apt-get install -y make git)`", text,
                  re.S)
    assert m, "the README's quick start no longer starts with apt-get update && ... make git"
    return m.group(1)


def checkout_tar():
    files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    keep = [f for f in files if f and os.path.isfile(os.path.join(ROOT, f.decode()))
            and not f.startswith((b".cache", b"build"))]
    return subprocess.run(["tar", "-c", "--null", "-T", "-"], cwd=ROOT, input=b"\0".join(keep),
                          capture_output=True, check=True).stdout


def run_in(image, script, timeout=2400):
    """script (sh) as root in a fresh, unprivileged container of image, the checkout in /w."""
    args = ["docker", "run", "--rm", "-i", "-e", "DEBIAN_FRONTEND=noninteractive",
            "-e", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt"]
    if os.path.isdir(EXTRA_CA) and os.listdir(EXTRA_CA):
        args += ["-v", f"{EXTRA_CA}:{EXTRA_CA}:ro"]
    prologue = ("set -eu; mkdir -p /w; tar -x -C /w; cd /w; "
                f"echo '+ {readme_first_command()}'; {readme_first_command()} >/dev/null; ")
    t0 = time.monotonic()
    p = subprocess.run(args + [image, "sh", "-c", prologue + script], input=checkout_tar(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), time.monotonic() - t0


def test_slim_image_unprivileged_setup_test_and_a_subset_of_the_suite():
    subset = "test_systemd or disk_full or check_connect_redis or duration or admin_listener"
    rc, out, took = run_in("debian:12-slim", f"""
        test ! -e /usr/share/man/man1 && echo 'no /usr/share/man/man1 (slim)'
        ! command -v ps >/dev/null && echo 'no procps'
        make setup-test >/tmp/setup.log 2>&1 || {{ tail -n 40 /tmp/setup.log; exit 1; }}
        make -j2 BUILD=build-slim all >/tmp/build.log 2>&1 || {{ tail -n 40 /tmp/build.log; exit 1; }}
        ALMABRIDGE_BUILD=build-slim .cache/venv/bin/python3 tests/run.py -k '{subset}'
    """)
    print(f"debian:12-slim, unprivileged: README command, make setup-test, build, unit tests "
          f"and an e2e subset in {took:.0f} s")
    assert rc == 0, out[-6000:]
    assert "no /usr/share/man/man1 (slim)" in out and "no procps" in out, out[:2000]
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, 0 failed, (\d+) skipped", last)
    assert m and int(m.group(2)) >= 1, last
    assert "needs the privilege to mount a 64 KiB tmpfs" in out, out[-4000:]


def test_minbase_setup_build_and_install():
    rc, out, took = run_in(MINBASE, """
        ! command -v python3 >/dev/null && echo 'no python3 (minbase)'
        make setup >/tmp/setup.log 2>&1 || { tail -n 40 /tmp/setup.log; exit 1; }
        make -j2 BUILD=build-slim build-slim/almabridge build-slim/tests/config_test \
            build-slim/tests/http1_test build-slim/tests/signature_test >/tmp/build.log 2>&1 \
            || { tail -n 40 /tmp/build.log; exit 1; }
        for t in config_test http1_test signature_test; do build-slim/tests/$t | tail -n 1; done
        make install BUILD=build-slim PREFIX=/usr DESTDIR=/tmp/root >/dev/null
        /tmp/root/usr/bin/almabridge --version
        test -s /tmp/root/usr/share/man/man1/almabridge.1 && echo 'man page installed'
        /tmp/root/usr/bin/almabridge --check-connect --insecure-skip-signature \
            --file /tmp/e.jsonl | tail -n 1
    """, timeout=1800)
    print(f"minbase: README command, make setup, build, unit tests, make install in {took:.0f} s")
    assert rc == 0, out[-6000:]
    assert "no python3 (minbase)" in out
    assert out.count(" passed, 0 failed") == 3, out[-3000:]
    assert "man page installed" in out and "everything reachable" in out, out[-3000:]
