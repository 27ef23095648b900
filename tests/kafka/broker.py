#!/usr/bin/env python3
"""A real, single-node Apache Kafka broker for the end-to-end tests, and a real
three-node cluster.

    from broker import KafkaBroker, KafkaCluster

    with KafkaBroker() as kafka:            # fetches the jars once, then starts
        run_daemon(kafka.bootstrap)         # "127.0.0.1:PORT"
        msgs = kafka.consume("alma.events", count=1, timeout=10)
        assert msgs[0]["value"] == b"..."

    with KafkaCluster() as cluster:         # three KRaft nodes, started together
        cluster.create_topic("t", partitions=3)    # RF 3, min.insync.replicas=2
        cluster.kill(cluster.leader("t", 0))       # SIGKILL partition 0's leader
        run_daemon(cluster.bootstrap)       # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"

KafkaCluster's nodes are KafkaBrokers with node ids 1-3, each a combined broker and
controller, one static quorum of the three (controller.quorum.voters), every data
directory formatted with the same cluster id; see its docstring.

The broker is Kafka's own `kafka.Kafka` in KRaft mode (combined broker and
controller, node id 1) started with the machine's Java (17 or later) from the
jars that tests/kafka/fetch.sh puts in .cache/kafka/<version>/libs. It listens
on free loopback ports, keeps its data and logs in a temporary directory, and
auto-creates topics with one partition. Producing and consuming go through
kcat, which the daemon's own tests need anyway.

Every broker started here is stopped at interpreter exit (atexit), and the JVM
is told by the kernel to die with the Python process that started it
(PR_SET_PDEATHSIG), so a killed test run leaves no broker behind; that part,
and the life cycle (stop, kill, restart, close), is tests/harness.py's
ServerProcess, which RedisServer shares.

CLI:
    python3 tests/kafka/broker.py fetch     only fetch the jars
    python3 tests/kafka/broker.py run       start, print the bootstrap address,
                                            wait for Ctrl-C

Environment:
    KAFKA_VERSION          version to fetch and run (default: the pom's)
    ALMABRIDGE_JAVA        java binary to use (default: $JAVA_HOME/bin/java, java)
    ALMABRIDGE_KEEP_TMP=1  keep the temporary directories (logs) after close()
    ALMABRIDGE_KAFKA_CDS=0 do not use (or make) the class-data-sharing archive

Start-up: the first clean stop() of a broker dumps the classes it loaded into a
CDS archive next to the jars (.cache/kafka/<version>/cds/); later JVMs map it
and start about 0.8 s sooner.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))  # tests/, for harness

from harness import ServerProcess, free_ports, log_tail  # noqa: E402

FETCH_SH = HERE / "fetch.sh"
PROBE_TOPIC = "_almabridge_probe"

# Start-up matters more than throughput here: one C1-compiled JVM with the
# serial collector starts the broker about a second sooner on two cores.
DEFAULT_JVM_OPTS = [
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
]

LOG4J2_TEMPLATE = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = FILE
logger.kafka_request.name = kafka.request.logger
logger.kafka_request.level = warn
"""

# ---------------------------------------------------------------- helpers


def fetch(version=None):
    """Fetch the broker's jars (once) and return their directory as a Path.

    Raises RuntimeError carrying fetch.sh's message ("cannot fetch Apache
    Kafka from Maven Central: ...") when Maven cannot get them.
    """
    cmd = [str(FETCH_SH)]
    if version:
        cmd.append(version)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or "tests/kafka/fetch.sh failed")
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    return Path(proc.stdout.strip().splitlines()[-1])


_java_checked = {}


def find_java():
    """Return the path of a Java 17+ binary, or raise RuntimeError."""
    candidates = []
    if os.environ.get("ALMABRIDGE_JAVA"):
        candidates.append(os.environ["ALMABRIDGE_JAVA"])
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    if shutil.which("java"):
        candidates.append(shutil.which("java"))
    for java in candidates:
        if java not in _java_checked:
            _java_checked[java] = _java_major(java)
        if _java_checked[java] >= 17:
            return java
    raise RuntimeError("Kafka 4 needs Java 17 or later; none found (tried %s); "
                       "set ALMABRIDGE_JAVA" % (candidates or "nothing"))


def _java_major(java):
    try:
        out = subprocess.run([java, "-version"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    # openjdk version "17.0.15" 2025-04-15   /   java version "1.8.0_392"
    for line in out.splitlines():
        if "version" in line and '"' in line:
            v = line.split('"')[1].split(".")
            return int(v[1]) if v[0] == "1" else int(v[0])
    return 0


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _random_cluster_id():
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


# ---------------------------------------------------------------- kcat


class KcatClient:
    """Producing, consuming and metadata through kcat against self.bootstrap (one
    address or several, comma-separated): shared by KafkaBroker and KafkaCluster."""

    def produce(self, topic, value, key=None, headers=None, partition=None):
        """Produce one message with kcat and wait for its acknowledgement.
        value: bytes or str (sent as is, newlines included); key: str or
        None; headers: dict str -> str; partition: int or None (partitioner)."""
        if isinstance(value, str):
            value = value.encode()
        with tempfile.NamedTemporaryFile(prefix="almabridge-msg-") as f:
            f.write(value)
            f.flush()
            # A file argument is sent whole as one message.
            cmd = ["kcat", "-P", "-b", self.bootstrap, "-t", topic,
                   "-X", "message.timeout.ms=10000"]
            if key is not None:
                cmd += ["-k", key]
            if partition is not None:
                cmd += ["-p", str(partition)]
            for k, v in (headers or {}).items():
                cmd += ["-H", "%s=%s" % (k, v)]
            proc = subprocess.run(cmd + [f.name], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError("kcat produce to %s failed: %s"
                               % (topic, proc.stderr.decode(errors="replace").strip()))

    def consume(self, topic, count=None, timeout=10.0):
        """Read the topic from the beginning with kcat.

        Waits up to timeout seconds until it holds at least count messages,
        then returns ALL its messages (so duplicates show up), sorted by
        (partition, offset); after the timeout, returns what is there. With
        count None, reads once without waiting. Each message is a dict:
          key        str or None (bytes that are not UTF-8 kept as surrogates)
          value      bytes or None
          headers    dict str -> str or None (last one wins on duplicates)
          header_list list of (name, value) in order
          topic, partition, offset, timestamp (ms)
        """
        deadline = time.monotonic() + timeout
        while True:
            msgs = self._read_all(topic)
            if count is None or len(msgs) >= count or time.monotonic() >= deadline:
                return msgs
            time.sleep(0.2)

    def _read_all(self, topic):
        try:
            proc = subprocess.run(
                ["kcat", "-C", "-b", self.bootstrap, "-t", topic, "-o", "beginning",
                 "-e", "-J", "-q", "-X", "fetch.wait.max.ms=20"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        except subprocess.TimeoutExpired:
            return []
        if proc.returncode != 0:  # e.g. the topic does not exist yet
            return []
        out = []
        for line in proc.stdout.decode("utf-8", "surrogateescape").splitlines():
            if line.startswith("{"):
                out.append(_parse_kcat_json(json.loads(line)))
        out.sort(key=lambda m: (m["partition"], m["offset"]))
        return out

    def topics(self):
        """Names of the topics the broker has (internal ones included)."""
        return sorted(t["topic"] for t in self.metadata()["topics"])

    def metadata(self, topic=None):
        """kcat -L -J: {"brokers": [{"id", "name"}], "topics": [{"topic", "partitions":
        [{"partition", "leader", "replicas": [{"id"}], "isrs": [{"id"}]}]}]}, as the
        broker kcat reaches first answers a Metadata request (only the topic if given)."""
        cmd = ["kcat", "-L", "-J", "-b", self.bootstrap, "-m", "5"]
        if topic is not None:
            cmd += ["-t", topic]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError("kcat -L on %s failed: %s"
                               % (self.bootstrap, proc.stderr.decode(errors="replace").strip()))
        return json.loads(proc.stdout)


# ---------------------------------------------------------------- the broker


class KafkaBroker(KcatClient, ServerProcess):
    """One single-node KRaft Kafka broker on free loopback ports.

    KafkaBroker(version=None, jvm_opts=None, properties=None, log_level="INFO")
      version     Kafka version to fetch/run (default: the pom's, or $KAFKA_VERSION)
      jvm_opts    list replacing DEFAULT_JVM_OPTS
      properties  dict of extra server.properties entries (override ours)
      log_level   root level of the broker's log (<workdir>/server.log)

    Attributes once started: port, controller_port, bootstrap ("127.0.0.1:PORT"),
    workdir (Path), log_path (Path), pid, startup_seconds (last start, float).

    stop(timeout=30.0), kill(), restart(timeout=60.0, kill=False), close(),
    is_running(), log_tail(lines=40) and the with-statement come from
    ServerProcess (tests/harness.py).
    """

    kind = "Kafka broker"
    log_name = "server.log"
    tmp_prefix = "almabridge-kafka-"
    stop_timeout = 30.0

    def __init__(self, version=None, jvm_opts=None, properties=None, log_level="INFO"):
        super().__init__()
        self.version = version
        self.jvm_opts = list(DEFAULT_JVM_OPTS if jvm_opts is None else jvm_opts)
        self.properties = dict(properties or {})
        self.log_level = log_level
        self.libs = None
        self.java = None
        self.controller_port = None
        self.cluster_id = None
        self.startup_seconds = None
        self._stdout = None
        self._cds_dump = None

    # -- properties

    @property
    def bootstrap(self):
        """'127.0.0.1:PORT', the address for bootstrap.servers / kcat -b."""
        if self.port is None:
            raise RuntimeError("KafkaBroker not started")
        return "127.0.0.1:%d" % self.port

    # -- life cycle

    def start(self, timeout=60.0):
        """Fetch if needed, then start the broker and wait until it accepts a
        produce. The first start picks ports and formats a new data directory;
        later starts (restart()) reuse both. Returns self. Raises RuntimeError
        (with the log's tail) if the broker dies or is not ready in time."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        if self.libs is None:
            self.libs = fetch(self.version)
            self.java = find_java()
        if self.workdir is None:
            try:
                self._prepare()
            except BaseException:
                self.close()
                raise
        self._launch()
        self._wait_ready(t0 + timeout)
        self.startup_seconds = time.monotonic() - t0
        return self

    def _prepare(self):
        self.port, self.controller_port = free_ports(2)
        self._make_workdir()
        self._write_config(self._server_properties({
            "node.id": "1",
            "controller.quorum.bootstrap.servers": "127.0.0.1:%d" % self.controller_port,
        }))
        self.cluster_id = _random_cluster_id()
        self._format(["--standalone"])

    def _server_properties(self, own):
        """server.properties: ours, then own (the node's identity and quorum), then the
        caller's properties (which override both)."""
        props = {
            "process.roles": "broker,controller",
            "listeners": "PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d"
                         % (self.port, self.controller_port),
            "advertised.listeners": "PLAINTEXT://127.0.0.1:%d" % self.port,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After kill(), the controller fences the dead incarnation only
            # when its session times out (default 9 s) and the restarted
            # broker waits for that; 3 s keeps crash tests short.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        props.update(own)
        props.update({k: str(v) for k, v in self.properties.items()})
        return props

    def _write_config(self, props):
        """Write the broker's and the tools' log configuration and server.properties
        (props, a dict) into the working directory."""
        (self.workdir / "log4j2.properties").write_text(
            LOG4J2_TEMPLATE.format(log=self.workdir / "server.log", level=self.log_level))
        (self.workdir / "tools-log4j2.properties").write_text(
            "status = warn\nappender.e.type = Console\nappender.e.name = E\n"
            "appender.e.target = SYSTEM_ERR\nappender.e.layout.type = PatternLayout\n"
            "appender.e.layout.pattern = %p %m%n\n"
            "rootLogger.level = warn\nrootLogger.appenderRef.e.ref = E\n")
        (self.workdir / "server.properties").write_text(
            "".join("%s=%s\n" % kv for kv in props.items()))

    def _format(self, extra):
        """Format the data directory (kafka-storage format) for cluster_id."""
        self._java_tool(["kafka.tools.StorageTool", "format", "-t", self.cluster_id,
                         "-c", str(self.workdir / "server.properties"), *extra])

    def _classpath(self):
        return str(self.libs / "*")

    def _cds_archive(self):
        """Path of the class-data-sharing archive for this Java, these JVM
        options and these jars (a fetch replaces the directory), or None
        when disabled by ALMABRIDGE_KAFKA_CDS=0."""
        if os.environ.get("ALMABRIDGE_KAFKA_CDS") == "0":
            return None
        ident = "%s|%s|%s" % (os.path.realpath(self.java), os.path.getmtime(self.java),
                              " ".join(self.jvm_opts))
        name = hashlib.sha256(ident.encode()).hexdigest()[:16] + ".jsa"
        return self.libs.parent / "cds" / name

    def _cds_opts(self, dump):
        """JVM options to map the archive if there is one; else, if dump,
        to have this JVM write it at exit (_reap() keeps it after a clean
        stop, so a crashed JVM never leaves a half-written archive)."""
        archive = self._cds_archive()
        if archive is None:
            return []
        if archive.exists():
            return ["-XX:SharedArchiveFile=%s" % archive, "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
        if not dump:
            return []
        archive.parent.mkdir(exist_ok=True)
        self._cds_dump = (archive.with_suffix(".%d-%x.tmp" % (os.getpid(), id(self))), archive)
        return ["-XX:ArchiveClassesAtExit=%s" % self._cds_dump[0], "-Xlog:cds=off"]

    def _java_tool(self, args, timeout=120):
        """Run a Kafka command-line tool class; return its stdout or raise."""
        cmd = [self.java, *self.jvm_opts, *self._cds_opts(dump=False),
               "-Dlog4j2.configurationFile=%s" % (self.workdir / "tools-log4j2.properties"),
               "-cp", self._classpath(), *args]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError("%s failed (exit %d):\n%s"
                               % (args[0], proc.returncode, proc.stdout[-4000:]))
        return proc.stdout

    def _launch(self):
        self._cds_dump = None
        cmd = [self.java, *self.jvm_opts, *self._cds_opts(dump=True),
               "-Dlog4j2.configurationFile=%s" % (self.workdir / "log4j2.properties"),
               "-Dkafka.logs.dir=%s" % self.workdir,
               "-cp", self._classpath(), "kafka.Kafka", str(self.workdir / "server.properties")]
        self._stdout = open(self.workdir / "stdout.log", "ab")
        self._spawn(cmd, self._stdout)

    def _reap(self):
        dump = self._cds_dump
        # 143: the JVM's exit status after SIGTERM and a clean shutdown.
        if dump and self._proc.returncode in (0, 143) and dump[0].exists():
            os.replace(dump[0], dump[1])
        elif dump and dump[0].exists():
            dump[0].unlink()
        self._cds_dump = None
        super()._reap()
        if self._stdout:
            self._stdout.close()
            self._stdout = None

    def _wait_ready(self, deadline):
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._reap()
                raise RuntimeError("Kafka broker exited with %s during start-up; log:\n%s\n%s"
                                   % (code, self.log_tail(),
                                      log_tail(self.workdir / "stdout.log", 20)))
            if port_open(self.port) and self._probe():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("Kafka broker not ready in time; log:\n" + self.log_tail())
            time.sleep(0.1)

    def _probe(self):
        try:
            proc = subprocess.run(
                ["kcat", "-P", "-b", self.bootstrap, "-t", PROBE_TOPIC,
                 "-X", "message.timeout.ms=5000"],
                input=b"probe", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0

    # -- topics and messages

    def create_topic(self, name, partitions=1, config=None):
        """Create a topic with kafka-topics (TopicCommand); config is a dict of
        topic configs. Topics are also auto-created (1 partition) on first
        produce, so this is only needed for several partitions or configs."""
        self._topic_command(self.bootstrap, name, ["--partitions", str(partitions),
                                                   "--replication-factor", "1"], config)

    def _topic_command(self, bootstrap, name, layout, config):
        args = ["org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap,
                "--create", "--topic", name, *layout]
        for k, v in (config or {}).items():
            args += ["--config", "%s=%s" % (k, v)]
        self._java_tool(args)


# ---------------------------------------------------------------- the cluster


class _ClusterNode(KafkaBroker):
    """One node of a KafkaCluster: a combined broker and controller, one voter of the
    cluster's static quorum. The cluster gives it its ports, cluster id and quorum before
    the first start; after that start(), stop(), kill() and restart() are KafkaBroker's."""

    kind = "Kafka cluster node"
    tmp_prefix = "almabridge-kafkanode-"

    def __init__(self, node_id, **kw):
        super().__init__(**kw)
        self.node_id = node_id
        self.own = {}

    def _prepare(self):
        self._make_workdir()
        self._write_config(self._server_properties(self.own))
        self._format([])  # controller.quorum.voters: a static quorum, formatted as such

    def _probe(self):
        """Ready when this node's broker answers a Metadata request listing itself: it
        registered with the active controller and is unfenced."""
        try:
            brokers = self.metadata()["brokers"]
        except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired):
            return False
        return any(b.get("id") == self.node_id for b in brokers)


class KafkaCluster(KcatClient):
    """A real Kafka cluster of `size` KRaft nodes (default 3) on free loopback ports, each
    a combined broker and controller, node ids 1..size, one static quorum of all of them
    (controller.quorum.voters; every data directory formatted with the same cluster id).
    Internal topics and auto-created topics get replication factor `size` and
    min.insync.replicas size-1 (3 and 2).

    KafkaCluster(size=3, version=None, jvm_opts=None, properties=None, log_level="INFO")
      as KafkaBroker's; properties go to every node.

    start(timeout=90.0)  starts the JVMs together and waits until every broker is
                         registered and unfenced (a quorum needs a majority up)
    bootstrap            "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3", for bootstrap.servers / kcat -b
    node(i)              node i (a KafkaBroker: port, bootstrap, pid, log_path, log_tail()...)
    kill(i)              SIGKILL node i (its data stays)
    restart(i, timeout=60.0, kill=False)
                         stop (or kill) node i if it runs and start it again on its ports
                         and data; returns once it is registered and unfenced again
    create_topic(name, partitions=1, replication_factor=None, config=None, assignment=None)
                         kafka-topics with replication factor `size` (and
                         min.insync.replicas=size-1 unless config says otherwise), or the
                         replica assignment given ([[broker ids of partition 0], ...], the
                         first of each list its preferred leader); waits until every
                         partition has a leader and all its replicas in sync
    partitions(topic)    {partition: {"leader": id or -1, "replicas": [ids], "isr": [ids]}}
    leader(topic, partition=0)
    quorum_leader()      the node id of the active controller
    produce(), consume(), topics(), metadata()  as KafkaBroker's, on the whole cluster
    close()              stops every node (together) and removes their directories
    """

    def __init__(self, size=3, version=None, jvm_opts=None, properties=None, log_level="INFO"):
        self.size = size
        self.version = version
        self.nodes = [_ClusterNode(i + 1, jvm_opts=jvm_opts, properties=properties,
                                   log_level=log_level) for i in range(size)]
        self.cluster_id = None
        self.startup_seconds = None

    @property
    def bootstrap(self):
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id):
        return self.nodes[node_id - 1]

    def start(self, timeout=90.0):
        t0 = time.monotonic()
        try:
            if self.cluster_id is None:
                self._prepare()
            for n in self.nodes:  # from this thread: the JVMs die with it (harness.py)
                if not n.is_running():
                    n._launch()
            for n in self.nodes:
                n._wait_ready(t0 + timeout)
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _prepare(self):
        libs, java = fetch(self.version), find_java()
        ports = free_ports(2 * self.size)
        for i, n in enumerate(self.nodes):
            n.libs, n.java = libs, java
            n.port, n.controller_port = ports[2 * i], ports[2 * i + 1]
        voters = ",".join("%d@127.0.0.1:%d" % (n.node_id, n.controller_port) for n in self.nodes)
        rf, isr = str(self.size), str(max(1, self.size - 1))
        self.cluster_id = _random_cluster_id()
        for n in self.nodes:
            n.cluster_id = self.cluster_id
            n.own = {
                "node.id": str(n.node_id),
                "controller.quorum.voters": voters,
                "default.replication.factor": rf,
                "min.insync.replicas": isr,
                "offsets.topic.replication.factor": rf,
                "transaction.state.log.replication.factor": rf,
                "transaction.state.log.min.isr": isr,
                "share.coordinator.state.topic.replication.factor": rf,
                "share.coordinator.state.topic.min.isr": isr,
            }
        # kafka-storage format is a JVM each: side by side
        errors = []

        def prepare(n):
            try:
                n._prepare()
            except BaseException as e:  # noqa: B036 (re-raised below)
                errors.append(e)

        threads = [threading.Thread(target=prepare, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def kill(self, node_id):
        self.node(node_id).kill()

    def restart(self, node_id, timeout=60.0, kill=False):
        self.node(node_id).restart(timeout=timeout, kill=kill)
        return self

    def close(self):
        for n in self.nodes:  # SIGTERM to all first: each shuts down while the quorum lives
            if n.is_running():
                n._proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            n.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
        return False

    # -- topics

    def create_topic(self, name, partitions=1, replication_factor=None, config=None,
                     assignment=None, timeout=30.0):
        config = dict(config or {})
        config.setdefault("min.insync.replicas", max(1, self.size - 1))
        if assignment:
            layout = ["--replica-assignment",
                      ",".join(":".join(str(b) for b in p) for p in assignment)]
        else:
            layout = ["--partitions", str(partitions), "--replication-factor",
                      str(replication_factor or self.size)]
        runner = next(n for n in self.nodes if n.is_running())
        runner._topic_command(self.bootstrap, name, layout, config)
        deadline = time.monotonic() + timeout
        while True:
            parts = self.partitions(name)
            if parts and all(p["leader"] >= 0 and sorted(p["isr"]) == sorted(p["replicas"])
                             for p in parts.values()):
                return parts
            if time.monotonic() > deadline:
                raise RuntimeError("topic %s not in sync after %.0f s: %s" % (name, timeout, parts))
            time.sleep(0.2)

    def partitions(self, topic):
        """{partition: {"leader", "replicas", "isr"}} of topic, as the metadata has it
        ({} while the topic is unknown)."""
        try:
            md = self.metadata(topic)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return {}
        out = {}
        for t in md.get("topics", []):
            if t.get("topic") != topic:
                continue
            for p in t.get("partitions") or []:
                out[p["partition"]] = {
                    "leader": p.get("leader", -1),
                    "replicas": [r["id"] for r in p.get("replicas", [])],
                    "isr": [r["id"] for r in p.get("isrs", [])],
                }
        return out

    def leader(self, topic, partition=0):
        """The broker id leading topic's partition, or None (no leader, unknown topic)."""
        p = self.partitions(topic).get(partition)
        return p["leader"] if p and p["leader"] >= 0 else None

    def quorum_leader(self):
        """The node id of the active controller (the KRaft quorum's leader), from
        kafka-metadata-quorum describe --status. (A KRaft broker's Metadata answer names a
        random broker as controller, so kcat cannot tell.)"""
        runner = next(n for n in self.nodes if n.is_running())
        out = runner._java_tool(["org.apache.kafka.tools.MetadataQuorumCommand",
                                 "--bootstrap-server", self.bootstrap, "describe", "--status"])
        m = re.search(r"^LeaderId:\s*(-?\d+)", out, re.M)
        if not m:
            raise RuntimeError("no LeaderId in kafka-metadata-quorum's answer:\n" + out)
        return int(m.group(1))


def event_of(headers, value):
    """The CloudEvent (a dict, data parsed) of a message in either content mode of the
    Kafka protocol binding: binary when a ce_specversion header is there (as the SDKs
    decide), else structured. None when the value is no JSON."""
    try:
        if "ce_specversion" in headers:
            ev = {k[3:]: v for k, v in headers.items() if k.startswith("ce_")}
            if "content-type" in headers:
                ev["datacontenttype"] = headers["content-type"]
            if value is not None:
                ev["data"] = json.loads(value)
            return ev
        return json.loads(value) if value is not None else None
    except ValueError:
        return None


def _parse_kcat_json(j):
    # kcat -J writes payload bytes as they are (non-UTF-8 included) and
    # escapes only control characters, so surrogateescape gets the bytes back.
    payload = j.get("payload")
    hdr = j.get("headers") or []
    pairs = list(zip(hdr[0::2], hdr[1::2]))
    value = None if payload is None else payload.encode("utf-8", "surrogateescape")
    event = event_of(dict(pairs), value)
    return {
        "key": j.get("key"),
        "value": value,
        "event": event,
        "id": event.get("id") if event else None,
        "headers": dict(pairs),
        "header_list": pairs,
        "topic": j.get("topic"),
        "partition": j.get("partition"),
        "offset": j.get("offset"),
        "timestamp": j.get("ts"),
    }


# ---------------------------------------------------------------- CLI


def main(argv):
    if len(argv) != 2 or argv[1] not in ("run", "fetch"):
        sys.stderr.write("usage: %s run|fetch\n" % argv[0])
        return 2
    if argv[1] == "fetch":
        print(fetch())
        return 0
    broker = KafkaBroker()
    # Ctrl-C even when started in the background (where SIGINT is ignored),
    # and a clean stop on SIGTERM.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        broker.start()
        print(broker.bootstrap, flush=True)
        sys.stderr.write("Kafka %s up in %.1f s; log: %s; Ctrl-C stops it\n"
                         % (broker.libs.parent.name, broker.startup_seconds, broker.log_path))
        while broker.is_running():
            time.sleep(0.5)
        sys.stderr.write("broker exited; log:\n%s\n" % broker.log_tail())
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
