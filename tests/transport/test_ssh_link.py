"""The SSH link inside the transport, with a stand-in ``ssh`` (fake_ssh.py) instead of an SSH server: frames
over the child's stdio, diagnoses from its stderr, redial when it dies, no child left behind. The same
behaviour against a real sshd: tests/integration/test_ssh_links.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from exo_core.protocol import Ping, Pong
from exo_core.transport.ssh.link import SshLinkError
from exo_core.transport.ssh.route import SshRoute

from .conftest import Events, make, running, wait_until

FAKE = f"{sys.executable} {Path(__file__).with_name('fake_ssh.py')}"


def children() -> list[int]:
    """Pids of the fake ssh processes now running (zombies included)."""
    out = subprocess.run(["pgrep", "-f", "fake_ssh.py"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_frames_go_over_the_ssh_child_and_forget_reaps_it() -> None:
    a, b = make("a", key="k", ssh_command=FAKE), make("b", key="k")
    async with running(a, b):
        info = await a.dial("127.0.0.1", b.port, ssh=SshRoute("me@lab"))
        assert info.node_id == "b" and info.remote_address == f"ssh://me@lab/{b.port}"
        await wait_until(lambda: "a" in b.peers)
        reply = await a.request("b", Ping(7), timeout=5)
        assert isinstance(reply, Pong) and reply.nonce == 7
        assert isinstance(await b.request("a", Ping(8), timeout=5), Pong)  # duplex: b reaches a back
        assert len(children()) == 1
    await wait_until(lambda: children() == [], within=5, what="no child once the transport stopped")


async def test_forget_closes_the_link_and_reaps_its_child() -> None:
    a, b = make("a", ssh_command=FAKE), make("b")
    events = Events(a)
    async with running(a, b):
        a.keep("127.0.0.1", b.port, ssh=SshRoute("me@lab"))
        a.keep("127.0.0.1", b.port, ssh=SshRoute("me@lab"))  # idempotent
        await wait_until(lambda: "b" in a.peers)
        assert len(children()) == 1
        a.forget("127.0.0.1", b.port, ssh=SshRoute("me@lab"))
        await wait_until(lambda: children() == [], within=5, what="the child gone after forget")
        await wait_until(lambda: events.kinds("b") == ["up", "down"])
    await wait_until(lambda: children() == [], within=5, what="no child once the transport stopped")


async def test_a_killed_child_is_redialed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exo_core.transport")
    a, b = make("a", ssh_command=FAKE), make("b")
    events = Events(a)
    async with running(a, b):
        a.keep("127.0.0.1", b.port, ssh=SshRoute("lab", 2222))
        await wait_until(lambda: "b" in a.peers)
        (pid,) = children()
        os.kill(pid, signal.SIGKILL)
        await wait_until(lambda: events.kinds("b") == ["up", "down", "up"], within=5, what="redialed")
        assert children() != [pid]
        assert isinstance(await a.request("b", Ping(1), timeout=5), Pong)
    assert any("ssh to lab:2222 was stopped by SIGKILL" in r.getMessage() for r in caplog.records)
    await wait_until(lambda: children() == [], within=5)


@pytest.mark.parametrize(
    ("destination", "port", "says"),
    [
        ("me@refuse", None, "refuse refused our SSH key (permission denied (publickey))"),
        ("lab", 1, "lab could not connect to 127.0.0.1:1 on its side: the remote port is closed"),
    ],
)
async def test_a_failed_link_raises_the_diagnosis(destination: str, port: int | None, says: str) -> None:
    a, b = make("a", ssh_command=FAKE), make("b")
    async with running(a, b):
        with pytest.raises(SshLinkError) as exc:
            await a.dial("127.0.0.1", port or b.port, ssh=SshRoute(destination))
        assert a.peers == {}
    message = str(exc.value)
    assert message.startswith(f"ssh://{destination}/") and says in message, message
    await wait_until(lambda: children() == [], within=5)


async def test_a_child_that_never_connects_is_stopped_at_the_handshake_timeout() -> None:
    a, b = make("a", ssh_command=FAKE, handshake_timeout=0.5), make("b")
    async with running(a, b):
        with anyio.fail_after(10):
            with pytest.raises(Exception, match="handshake"):
                await a.dial("127.0.0.1", b.port, ssh=SshRoute("hang"))
    await wait_until(lambda: children() == [], within=5)


async def test_a_missing_ssh_program_is_a_clear_error() -> None:
    a = make("a", ssh_command="/nonexistent/ssh -v")
    async with running(a):
        with pytest.raises(
            SshLinkError, match=r"cannot run '/nonexistent/ssh'.*--ssh-command / EXO_SSH_COMMAND"
        ):
            await a.dial("127.0.0.1", 1, ssh=SshRoute("lab"))
