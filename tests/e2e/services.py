"""The real servers the end-to-end tests run against, importable from
tests/e2e as `from services import KafkaBroker, KafkaCluster, RedisServer`.

The classes live beside their own tooling (tests/kafka/broker.py with
fetch.sh and pom.xml, tests/redis/server.py, tests/alma/api_stub.py; what they share, the process
life cycle, is ServerProcess in tests/harness.py); this module only puts those
directories on sys.path and re-exports them.
"""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
for _d in (_TESTS / "kafka", _TESTS / "redis", _TESTS / "alma"):
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))

from broker import KafkaBroker, KafkaCluster, fetch as fetch_kafka  # noqa: E402
from server import RedisServer  # noqa: E402
from api_stub import AlmaApiStub, instance as alma_instance  # noqa: E402

__all__ = ["KafkaBroker", "KafkaCluster", "RedisServer", "fetch_kafka", "AlmaApiStub", "alma_instance"]
