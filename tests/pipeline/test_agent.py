"""The accelerate agent's rendezvous store listens on the loopback address it is given, not on every interface."""

import datetime
from pathlib import Path

from pipeline.agent import LoopbackTCPStore


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                found.add(local.split(":")[0])
    return found


def test_a_loopback_store_listens_on_loopback_only():
    store = LoopbackTCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=10))
    store.set("key", "value")
    assert LoopbackTCPStore("127.0.0.1", store.port, 1, False, datetime.timedelta(seconds=10)).get("key") == b"value"
    assert _listening_addresses(store.port) == {"0100007F"}  # 127.0.0.1 only, not every interface
