"""`almabridge send` and `almabridge challenge` against the running daemon, over plain HTTP
and over TLS (the daemon's own --tls-cert, a CA of the test's making)."""
import http.server
import json
import threading

import pytest

from daemon import SECRET, free_port, samples
from jobs import run
from test_frontend import pki  # noqa: F401 (the fixture: a CA, certificates one and two)

LOAN = dict(samples())["loan_created"]


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "secrets"
    p.write_text("# the Alma integration profile's secret\n\n%s\n" % SECRET)
    return p


def test_send_signs_like_alma_and_prints_the_answer(daemon, secret_file, tmp_path):
    body = tmp_path / "loan.json"
    body.write_bytes(LOAN)
    url = "http://127.0.0.1:%d/webhook" % daemon.port
    rc, out, err = run("send", body, "--url", url, "--secret-file", secret_file)
    assert rc == 0, err
    assert out.startswith("HTTP 200")
    assert json.loads(out.splitlines()[1])["status"] == "accepted"
    assert daemon.events()[-1]["id"] == json.loads(LOAN)["id"]
    # the secret from the environment (never from the command line)
    rc, out, err = run("send", body, "--url", url, env={"ALMABRIDGE_SECRET": SECRET})
    assert rc == 0, err
    # a wrong secret: the daemon's 401 is printed, exit 1
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    rc, out, err = run("send", body, "--url", url, "--secret-file", wrong)
    assert rc == 1 and out.startswith("HTTP 401"), (rc, out, err)
    rc, out, err = run("send", body, "--url", url, "--unsigned")
    assert rc == 1 and out.startswith("HTTP 401")
    # no secret at all is a usage error
    rc, out, err = run("send", body, "--url", url, env={"ALMABRIDGE_SECRET": ""})
    assert rc == 2 and "secret" in err


def test_send_xml_and_usage_errors(daemon, secret_file, tmp_path):
    xml = tmp_path / "job_end.xml"
    from jobs import job_end_xml
    xml.write_bytes(job_end_xml("123"))
    url = "http://127.0.0.1:%d/webhook" % daemon.port
    rc, out, err = run("send", xml, "--url", url, "--secret-file", secret_file)
    assert rc == 0, (out, err)  # sent as application/xml
    assert run("send", xml)[0] == 2  # no --url
    assert run("send", "--url", url)[0] == 2  # no file
    rc, _, err = run("send", xml, "--url", "http://127.0.0.1:%d/webhook" % free_port(),
                     "--secret-file", secret_file)
    assert rc == 2 and err, err  # nobody listening


def test_challenge_checks_the_echo(daemon):
    rc, out, err = run("challenge", "http://127.0.0.1:%d/webhook" % daemon.port)
    assert rc == 0, err
    assert "echoed: OK" in out
    rc, out, err = run("challenge", "http://127.0.0.1:%d/nowhere" % daemon.port)
    assert rc == 1 and "HTTP 404" in out


def test_challenge_a_server_that_does_not_echo():
    class Wrong(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"challenge":"something else"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Wrong)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        rc, out, err = run("challenge", "http://127.0.0.1:%d/webhook" % srv.server_port)
        assert rc == 1 and "does not echo" in err
    finally:
        srv.shutdown()
        srv.server_close()


def test_send_and_challenge_over_tls(daemon_factory, pki, secret_file, tmp_path):
    d = daemon_factory(["--tls-cert", str(pki / "one.pem"), "--tls-key", str(pki / "one.key")],
                       start=False)
    d.scheme, d.cafile = "https", str(pki / "ca.pem")
    d.start()
    body = tmp_path / "loan.json"
    body.write_bytes(LOAN)
    for host in ("127.0.0.1", "localhost"):
        url = "https://%s:%d/webhook" % (host, d.port)
        rc, out, err = run("send", body, "--url", url, "--secret-file", secret_file,
                           "--cacert", pki / "ca.pem")
        assert rc == 0 and out.startswith("HTTP 200"), (host, out, err)
        rc, out, err = run("challenge", url, "--cacert", pki / "ca.pem")
        assert rc == 0, (host, err)
    url = "https://127.0.0.1:%d/webhook" % d.port
    # the test CA is not trusted by the system: refused unless given or --insecure
    rc, out, err = run("send", body, "--url", url, "--secret-file", secret_file)
    assert rc == 2 and "TLS" in err, err
    rc, out, err = run("challenge", url, "--insecure")
    assert rc == 0, err
    # plain HTTP to the TLS port gets no answer
    rc, _, err = run("challenge", "http://127.0.0.1:%d/webhook" % d.port)
    assert rc == 2, err


def test_send_reads_interim_and_chunked_answers_and_does_not_follow_redirects(secret_file,
                                                                              tmp_path):
    """What any HTTP/1.1 client must read (a load balancer may answer so): an interim
    `100 Continue` before the answer, a chunked body; the request is Alma's (signature over
    the exact body, content type, no `Expect`), and a redirect is printed, never followed
    (a signed body goes to the URL given only)."""
    import base64
    import hashlib
    import hmac
    import socket

    answers = [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n"
               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
               b"5\r\nhello\r\n7\r\n world\n\r\n0\r\n\r\n",
               b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\n"
               b"Content-Length: 0\r\nConnection: close\r\n\r\n"]
    seen = []
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        for answer in answers + [b"HTTP/1.1 500 Followed\r\nContent-Length: 0\r\n\r\n"]:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, body = data.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                hdrs = {k.strip().lower(): v.strip()
                        for k, v in (ln.split(":", 1) for ln in lines[1:])}
                while len(body) < int(hdrs.get("content-length", 0)):
                    body += conn.recv(65536)
                seen.append((lines[0], hdrs, body))
                conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    payload = LOAN + b" " * 2048  # past the size at which libcurl would ask `Expect`
    f = tmp_path / "loan.json"
    f.write_bytes(payload)
    url = "http://127.0.0.1:%d/webhook" % srv.getsockname()[1]
    try:
        rc, out, err = run("send", f, "--url", url, "--secret-file", secret_file)
        assert rc == 0, (out, err)
        assert out == "HTTP 202 Accepted\nhello world\n", out
        line, hdrs, body = seen[0]
        assert line == "POST /webhook HTTP/1.1" and body == payload
        sig = base64.b64encode(hmac.new(SECRET.encode(), payload, hashlib.sha256).digest())
        assert hdrs["x-exl-signature"] == sig.decode()
        assert hdrs["content-type"] == "application/json" and "expect" not in hdrs
        assert hdrs["user-agent"].startswith("almabridge/")
        rc, out, err = run("send", f, "--url", url, "--secret-file", secret_file)
        assert rc == 1 and out.startswith("HTTP 307 Temporary Redirect"), (out, err)
        assert len(seen) == 2, seen  # /elsewhere was not asked
    finally:
        srv.close()
