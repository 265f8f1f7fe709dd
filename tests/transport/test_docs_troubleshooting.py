"""docs/ssh-tunnels.md's troubleshooting tables say what exo really prints.

``exo ping HOST:PORT``: each failure this machine can produce on loopback is triggered for real (refused, a
listener that hangs up, one that stays silent, something that is not exo, a wrong cluster key, a full node)
and its message must match a row of the table. ``exo ping ssh://...``: every diagnosis the code can give is
produced from ssh's own words and must match a row, and every row must be one the code gives.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from exo_core.testing import find_free_ports
from exo_core.transport.ping import PingError, ping
from exo_core.transport.ssh.diagnose import diagnose
from exo_core.transport.ssh.route import SshRoute

from .conftest import make, running
from .test_ssh_route import CASES

DOC = Path(__file__).resolve().parents[2] / "docs" / "ssh-tunnels.md"
#: the table's placeholders, and the text they stand for
PLACEHOLDERS = (
    r"\[-p SSHPORT\] |SSH'S LAST LINE|SERVER|HOST:PORT|HOST|NODE|METHODS|SIGNAL|DESTINATION|REASON|\.\.\.|N\b"
)


def table(section: str) -> list[re.Pattern[str]]:
    """The first column of the table under ``### <section>`` as regexes (placeholders match anything)."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"### {section}", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    patterns = []
    for line in body.splitlines():
        m = re.match(r"^\| (``?)(.+?)\1 \|", line)
        if not m or m.group(2) in ("diagnosis", "message"):
            continue
        parts = re.split(f"({PLACEHOLDERS})", m.group(2).strip())
        regex = "".join(".+?" if i % 2 else re.escape(p) for i, p in enumerate(parts))
        patterns.append(re.compile(regex.replace(r"5s", r"[0-9.]+s")))
    assert patterns, f"no table under {section!r} in {DOC.name}"
    return patterns


def matching(patterns: list[re.Pattern[str]], message: str) -> list[re.Pattern[str]]:
    return [p for p in patterns if p.fullmatch(message)]


def test_every_ssh_diagnosis_is_a_row_and_every_row_a_diagnosis() -> None:
    rows = table("`exo ping ssh://...`")
    hit: set[str] = set()
    for stderr, code, _ in CASES:
        line = diagnose(stderr, code, SshRoute("root@lab"), "127.0.0.1", 50051)
        assert line is not None
        found = matching(rows, line)
        assert found, f"not in the table: {line!r}"
        hit.update(p.pattern for p in found)
    extra = [
        (["Connection closed by 10.0.0.1 port 22"], 255),  # the "closed the connection" row
        (["ssh: connect to host lab port 22: Network is unreachable"], 255),
    ]
    for stderr, code in extra:
        line = diagnose(stderr, code, SshRoute("lab", 2222), "10.0.0.7", 50052)
        assert line is not None and matching(rows, line), line
        hit.update(p.pattern for p in matching(rows, line))
    missed = [p.pattern for p in rows if p.pattern not in hit]
    assert missed == [], f"rows no diagnosis produces: {missed}"


async def _ping_message(port: int, key: str | None = None) -> str:
    with pytest.raises(PingError) as exc:
        await ping("127.0.0.1", port, cluster_key=key, count=1, timeout=1.0)
    return str(exc.value)


@asynccontextmanager
async def listener(behaviour: str) -> AsyncIterator[int]:
    """A loopback TCP listener that hangs up, stays silent, or answers like an HTTP server."""
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]

    async def serve() -> None:
        while True:
            await anyio.wait_readable(server)
            conn, _ = server.accept()
            if behaviour == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            if behaviour != "silent":
                conn.close()
            else:
                held.append(conn)

    held: list[socket.socket] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
            for c in held:
                c.close()
            server.close()


async def test_exo_ping_failures_print_what_the_table_says() -> None:
    rows = table("`exo ping HOST:PORT`")
    messages = []
    (free,) = find_free_ports(1)
    messages.append(await _ping_message(free))  # refused
    for behaviour in ("close", "silent", "http"):
        async with listener(behaviour) as port:
            messages.append(await _ping_message(port))
    keyed, full, other = make("keyed", key="k1"), make("full", max_connections=1), make("other")
    async with running(keyed, full, other):
        messages.append(await _ping_message(keyed.port, key="wrong"))  # authentication
        await other.dial("127.0.0.1", full.port)  # takes the full node's only slot
        messages.append(await _ping_message(full.port))
    for message in messages:
        head, _, rest = message.partition(": ")
        assert re.fullmatch(r"127\.0\.0\.1:\d+", head), message
        assert matching(rows, rest), f"not in the table: {rest!r}"
    kinds = {next(p.pattern for p in matching(rows, m.partition(": ")[2])) for m in messages}
    assert len(kinds) == len(messages), "each case should land on its own row"
