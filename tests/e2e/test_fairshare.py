"""A fair share of --max-buffered before the signature (issue 23): sixteen slow 4 MiB
unauthenticated bodies from one address must not make signed webhooks from another address
get 503. The attacker binds 127.0.0.2, Alma 127.0.0.1 (both loopback)."""
import socket
import threading
import time

from daemon import samples, with_id

LOAN = dict(samples())["loan_created"]
BODY = 4 << 20


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def slow_bodies(d, n, source="127.0.0.2"):
    """n connections from source, each sending a 4 MiB body but its last byte, then holding.
    Returns the sockets and a list that collects the status each one was answered."""
    head = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Exl-Signature: forged\r\nContent-Length: %d\r\n\r\n" % BODY)
    body = b"{" + b" " * (BODY - 2)
    socks, statuses, threads = [], [], []

    def feed(s):
        try:
            s.sendall(head + body)
        except OSError:
            pass
        try:
            s.settimeout(0.5)
            data = s.recv(64)
            if data.startswith(b"HTTP/1.1 "):
                statuses.append(int(data.split(b" ")[1]))
        except OSError:
            pass

    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(20)
        s.connect(("127.0.0.1", d.port))
        socks.append(s)
        t = threading.Thread(target=feed, args=(s,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(30)
    return socks, statuses


def signed_posts(d, n, tag):
    return [d.post(with_id(LOAN, "%s-%d" % (tag, i)), timeout=10).status for i in range(n)]


def test_sixteen_slow_bodies_from_one_address_do_not_starve_others(daemon_factory):
    d = daemon_factory(["--read-timeout", "120"])
    socks, statuses = slow_bodies(d, 16)
    try:
        # the attacker holds its share (16 MiB: three bodies of 4 MiB + 1 byte); the others
        # were refused with 503 (from the Content-Length, or when a body outgrew the share;
        # a refusal in the middle of a body may reach the sender as a reset instead)
        deadline = time.time() + 30
        while time.time() < deadline and len(statuses) < 12:
            time.sleep(0.1)
        assert len(statuses) >= 12 and set(statuses) == {503}, statuses
        held = metric(d.metrics(), "almabridge_buffered_bytes")
        assert 2 * BODY <= held <= 16 << 20, held
        assert signed_posts(d, 20, "fair") == [200] * 20
        assert len(d.events()) == 20
        assert "--max-buffered-per-client" in d.stderr()
    finally:
        for s in socks:
            s.close()


def test_without_the_share_the_same_attack_starves_others(daemon_factory):
    """The contrast that shows the test above measures something: with the per-client
    bound off, the same sixteen bodies fill --max-buffered and signed webhooks get 503."""
    full = 16 * BODY  # each body but its last byte: 4 MiB held each, exactly full
    d = daemon_factory(["--read-timeout", "120", "--max-buffered-per-client", "0",
                        "--max-buffered", str(full)])
    socks, statuses = slow_bodies(d, 16)
    try:
        deadline = time.time() + 60
        while (time.time() < deadline and
               metric(d.metrics(), "almabridge_buffered_bytes") < full):
            time.sleep(0.1)
        assert metric(d.metrics(), "almabridge_buffered_bytes") == full
        assert set(signed_posts(d, 5, "starved")) == {503}
    finally:
        for s in socks:
            s.close()
