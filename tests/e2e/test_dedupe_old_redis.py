"""Deduplication on a Redis older than 7.0 (docs/DEDUPLICATION.md): the store claims with
`SET key 1 PX ms NX GET` and the Redis sink's claim-and-write script starts with `SET ... NX
GET`, which Redis < 7.0 refuses with "ERR syntax error". Both must then fall back to their
Lua path (GET, then SET) for the rest of the connection and deduplicate just the same.

Debian 12 ships only Redis 7.0, so the old server is emulated: OldRedis, a proxy in front of
a real redis-server that answers as Redis 6.2 does where it matters here (a SET with both NX
and GET, and a script that runs one, is an error that says "syntax error"; the script is
not run) and passes everything else through, in order, one upstream connection per client
connection. What it does not emulate: anything else Redis 6.2 lacks, which the daemon does
not use."""
import socket
import socketserver
import threading

from daemon import free_port, samples, with_id
from services import RedisServer
from test_dedupe import dup_count, file_ids, send_copies, stream_ids
from test_redis import Resp

LOAN = dict(samples())["loan_created"]


class _Conn(Resp):
    """RESP reading on an accepted socket (Resp's buffering), keeping the raw bytes."""

    def __init__(self, sock):  # not Resp.__init__: no connection of its own
        self.sock, self.buf = sock, b""

    def read(self):
        """One RESP value: (raw bytes, decoded: bytes | int | list | None)."""
        line = self._line()
        raw, kind, rest = line + b"\r\n", line[:1], line[1:]
        if kind in (b"+", b"-"):
            return raw, rest
        if kind == b":":
            return raw, int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return raw, None
            data = self._exact(n)
            return raw + data + b"\r\n", data
        if kind == b"*":
            items = []
            for _ in range(max(int(rest), 0)):
                r, v = self.read()
                raw += r
                items.append(v)
            return raw, items
        raise ValueError("bad RESP line %r" % line)


class OldRedis:
    """A loopback proxy to redis_port that refuses SET ... NX ... GET like Redis 6.2.
    refused counts the refusals."""

    def __init__(self, redis_port):
        proxy = self
        self.refused = 0
        self.lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                up = socket.create_connection(("127.0.0.1", redis_port))
                client, upstream = _Conn(self.request), _Conn(up)
                try:
                    while True:
                        raw, cmd = client.read()
                        if proxy._refuses(cmd):
                            with proxy.lock:
                                proxy.refused += 1
                            self.request.sendall(b"-ERR Error running script: @user_script:1: "
                                                 b"ERR syntax error\r\n"
                                                 if cmd[0].upper().startswith(b"EVAL")
                                                 else b"-ERR syntax error\r\n")
                            continue
                        up.sendall(raw)
                        self.request.sendall(upstream.read()[0])
                except OSError:  # ConnectionError: a side closed
                    pass
                finally:
                    up.close()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "redis://127.0.0.1:%d" % self.port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _refuses(cmd):
        if not isinstance(cmd, list) or not cmd:
            return False
        name = cmd[0].upper()
        if name == b"SET":
            opts = {a.upper() for a in cmd[3:]}
            return b"NX" in opts and b"GET" in opts
        # a script that runs SET ... 'NX', 'GET' (its EVALSHA finds no script upstream:
        # it was never loaded there, so NOSCRIPT sends it here as EVAL)
        return name == b"EVAL" and b"'NX', 'GET'" in cmd[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def calls(port, cmd):
    """The calls of one command (INFO commandstats, scripts' commands included)."""
    with Resp(port) as r:
        info = r.call("INFO", "commandstats").decode()
    key = "cmdstat_%s:calls=" % cmd
    return int(info.split(key, 1)[1].split(",", 1)[0]) if key in info else 0


def test_store_falls_back_to_the_script_on_redis_before_7(daemon_factory, tmp_path):
    """The file sink with a Redis store behind OldRedis: the first claims are refused, the
    rest go as the script (the refusal is remembered per connection), and every id is in
    the file once however its copies came."""
    with RedisServer() as redis:
        old = OldRedis(redis.port)
        try:
            d = daemon_factory(["--dedupe-store", old.url], file_path=str(tmp_path / "e.jsonl"))
            answers = send_copies([d], ["6%05d" % i for i in range(60)])
            assert all(200 in st for st in answers.values()), answers
            got = file_ids(d)
            assert all(got[w] == 1 for w in answers), [w for w in answers if got[w] != 1]
            assert dup_count(d) > 0
            assert old.refused >= 1
            refused = old.refused
            assert d.post(with_id(LOAN, "6-last")).status == 200
            assert d.post(with_id(LOAN, "6-last")).status == 200
            assert file_ids(d)["6-last"] == 1
            assert old.refused == refused  # no new refusal on a connection that had one
            assert calls(redis.port, "evalsha") > 0 and calls(redis.port, "get") > 0
            with Resp(redis.port) as r:
                keys = r.call("KEYS", "almabridge:dedupe:*6-last")
                assert len(keys) == 1 and r.call("GET", keys[0]) == b"2"
        finally:
            old.close()


def test_redis_sink_falls_back_to_the_old_script_on_redis_before_7(daemon_factory):
    """Redis sink and store on one (old) server: the claim-and-write script that starts with
    SET NX GET is refused, the pre-7.0 script (GET, XADD, SET) runs instead: every id answered
    200 is in the stream once."""
    with RedisServer() as redis:
        old = OldRedis(redis.port)
        try:
            d = daemon_factory(["--sink", "redis", "--redis", old.url, "--dedupe-store", old.url,
                                "--route", "alma:old"])
            answers = send_copies([d], ["7%05d" % i for i in range(60)])
            ok = [w for w, st in answers.items() if 200 in st]
            assert len(ok) == 60, answers
            got = stream_ids(redis.port, "alma:old")
            assert all(got[w] == 1 for w in ok) and sum(got.values()) == 60, got
            assert dup_count(d) > 0
            assert old.refused >= 1
            assert calls(redis.port, "get") > 0  # the old script's GET
        finally:
            old.close()


def test_redis_sink_on_redis_7_claims_with_set_nx_get_and_undoes_a_failed_xadd(daemon_factory):
    """Redis 7: the claim-and-write script runs SET NX GET and XADD, no GET. An XADD that
    fails (the stream's key holds a string) leaves no stored marker behind: 503, and the
    retry once the key is fixed is written."""
    with RedisServer() as redis:
        d = daemon_factory(["--sink", "redis", "--redis", redis.url, "--dedupe-store", redis.url,
                            "--route", "alma:new"])
        with Resp(redis.port) as r:
            r.call("CONFIG", "RESETSTAT")
        assert d.post(with_id(LOAN, "5-1")).status == 200
        assert d.post(with_id(LOAN, "5-1")).status == 200
        assert stream_ids(redis.port, "alma:new")["5-1"] == 1
        assert calls(redis.port, "get") == 0 and calls(redis.port, "set") == 2
        with Resp(redis.port) as r:
            r.call("DEL", "alma:new")
            r.call("SET", "alma:new", "not a stream")
        assert d.post(with_id(LOAN, "5-2")).status == 503
        with Resp(redis.port) as r:
            assert r.call("KEYS", "almabridge:dedupe:*5-2") == []
            r.call("DEL", "alma:new")
        assert d.post(with_id(LOAN, "5-2")).status == 200
        assert d.post(with_id(LOAN, "5-2")).status == 200
        assert stream_ids(redis.port, "alma:new")["5-2"] == 1
