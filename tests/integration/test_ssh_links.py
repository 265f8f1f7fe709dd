"""exo keeps its own SSH links (``ssh -W``): remote nodes in network namespaces that have only loopback,
listening on 127.0.0.1, reachable by nothing but ``sshd -i`` started through the ssh config.

The local node's peers.json has one ``"ssh"`` entry per remote and nothing else runs: no ``-L`` tunnel, no
open port. Needs root (``ip netns``) and OpenSSH (``make test`` installs both).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_core.lan.testing import netns_unavailable
from exo_core.nodeproc import NodeProcess, find_free_ports
from exo_core.transport.ssh.testing import SshWorld, ssh_world, sshd_binary

from .support import PROMPTS, greedy, no_peers, plan_nodes, stream

_REASON = netns_unavailable() or (None if sshd_binary() else "sshd is not installed")
pytestmark = [pytest.mark.skipif(_REASON is not None, reason=_REASON or ""), pytest.mark.timeout(300)]
PROMPT = PROMPTS[0]
Start = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshWorld]:
    with ssh_world(tmp_path_factory.mktemp("ssh-world"), ["r1", "r2"]) as w:
        yield w


def ssh_peers(path: Path, peers: dict[str, dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"peers": peers}))
    return path


def local_node(exo_node: Start, world: SshWorld, peers: Path, *extra: str) -> NodeProcess:
    return exo_node(
        "--discovery-module",
        "manual",
        "--discovery-config-path",
        str(peers),
        "--discovery-config-poll-interval",
        "0.2",
        *extra,
        env={"EXO_SSH_COMMAND": world.command},
    )


def ssh_children(world: SshWorld) -> list[int]:
    """Pids of the ``ssh`` processes using this world's config (any parent)."""
    out = subprocess.run(["pgrep", "-f", f"^ssh -F {world.config}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(0.05)
    return time.monotonic() - start


def peer_count(node: NodeProcess) -> int:
    return len(node.get("/v1/topology").get("nodes", []))


def test_one_ssh_entry_forms_the_cluster_and_survives_a_killed_ssh(
    exo_node: Start, world: SshWorld, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    remote = exo_node(*no_peers(tmp_path, "remote"), netns=world.hosts["r1"])
    peers = ssh_peers(tmp_path / "peers.json", {"r1": {"ssh": "r1", "port": remote.node_port}})
    local = local_node(exo_node, world, peers)
    local.wait_for_nodes(2)
    remote.wait_for_nodes(2)  # it learned the local node over the link alone: the link is duplex
    assert greedy(local, PROMPT) == reference[PROMPT]
    assert sorted(plan_nodes(local)) == sorted([local.node_id, remote.node_id])
    assert greedy(remote, PROMPT) == reference[PROMPT]  # the remote's own API serves, over the same link

    # kill the ssh child: exo redials it within 5 s and the next request uses both nodes again
    (child,) = ssh_children(world)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: ssh_children(world) not in ([], [child]), 5, "a new ssh child")
    wait_until(lambda: peer_count(local) == 2 and peer_count(remote) == 2, 5, "the link back up")
    assert greedy(local, PROMPT) == reference[PROMPT]
    assert sorted(plan_nodes(local)) == sorted([local.node_id, remote.node_id])
    assert "SSH link ssh://r1/" in local.tail(200) and "SIGKILL" in local.tail(200)

    # a stream in flight when the ssh child dies completes (failover onto the local node)
    chunks: list[dict[str, Any]] = []
    result: list[tuple[str, dict[str, Any] | None]] = []
    thread = threading.Thread(target=lambda: result.append(stream(local, PROMPTS[1], 120, chunks.append)))
    thread.start()
    wait_until(lambda: len(chunks) >= 10, 60, "10 streamed chunks")
    for pid in ssh_children(world):
        os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert result, "the stream did not finish"
    text, error = result[0]
    assert error is None, error
    assert text

    # the peer removed from peers.json: its ssh child goes, none is left behind
    ssh_peers(peers, {})
    wait_until(lambda: ssh_children(world) == [], 10, "the ssh child gone after the peer was removed")
    wait_until(lambda: peer_count(local) == 1, 10, "the peer gone")
    ssh_peers(peers, {"r1": {"ssh": "r1", "port": remote.node_port}})
    wait_until(lambda: peer_count(local) == 2, 10, "the peer back")
    local.stop()
    wait_until(lambda: ssh_children(world) == [], 5, "no ssh child after the node stopped")
    wait_until(lambda: not ssh_zombies(), 5, "no ssh zombie")  # (sshd -i ones are the test server's)


def ssh_zombies() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if line.startswith("Z") and "[ssh]" in line]


@pytest.mark.parametrize(
    ("alias", "closed_port", "diagnosis"),
    [
        ("r1-wrong-host-key", False, "the host key of r1-wrong-host-key changed since it was recorded"),
        ("r1-stranger", False, "r1-stranger refused our SSH key (permission denied (publickey))"),
        ("r1", True, "the remote port is closed: is exo running there, and on which port"),
    ],
    ids=["wrong-host-key", "refused-key", "closed-remote-port"],
)
def test_a_failing_link_says_why_and_the_node_serves_alone(
    exo_node: Start,
    world: SshWorld,
    tmp_path: Path,
    reference: dict[str, list[str]],
    alias: str,
    closed_port: bool,
    diagnosis: str,
) -> None:
    remote = exo_node(*no_peers(tmp_path, "remote"), netns=world.hosts["r1"])
    port = find_free_ports(1)[0] if closed_port else remote.node_port
    peers = ssh_peers(tmp_path / "peers.json", {"r1": {"ssh": alias, "port": port}})
    local = local_node(exo_node, world, peers)
    wait_until(lambda: diagnosis in local.tail(100), 20, f"{diagnosis!r} in the log")
    line = next(x for x in local.tail(100).splitlines() if diagnosis in x)
    assert "dialing ssh://" in line and "WARNING" in line
    assert greedy(local, PROMPT) == reference[PROMPT]  # it keeps serving, alone
    assert peer_count(local) == 1
    ping = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_core.cli",
            "ping",
            f"ssh://{alias}/{port}",
            "--ssh-command",
            world.command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 1, ping
    assert diagnosis in ping.stderr and len(ping.stderr.strip().splitlines()) == 1, ping.stderr


def test_exo_ping_over_an_ssh_link(exo_node: Start, world: SshWorld, tmp_path: Path) -> None:
    remote = exo_node(*no_peers(tmp_path, "remote"), netns=world.hosts["r2"])
    ping = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_core.cli",
            "ping",
            f"ssh://r2/{remote.node_port}",
            "--ssh-command",
            world.command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 0, ping.stderr
    assert f"exo node {remote.node_id} at ssh://r2/{remote.node_port}" in ping.stdout
    assert world.command.split()[0] and ssh_children(world) == []


def test_two_isolated_remotes_joined_by_two_ssh_links(
    exo_node: Start, world: SshWorld, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    r1 = exo_node(*no_peers(tmp_path, "r1"), netns=world.hosts["r1"])
    r2 = exo_node(*no_peers(tmp_path, "r2"), netns=world.hosts["r2"])
    peers = ssh_peers(
        tmp_path / "peers.json",
        {"net-a": {"ssh": "r1", "port": r1.node_port}, "net-b": {"address": f"ssh://r2/{r2.node_port}"}},
    )
    local = local_node(exo_node, world, peers)
    for node in (local, r1, r2):
        node.wait_for_nodes(3)
    topo = local.get("/v1/topology")
    pairs = {frozenset((c["a"], c["b"])) for c in topo["connections"]}
    assert pairs == {frozenset((local.node_id, r1.node_id)), frozenset((local.node_id, r2.node_id))}
    for api_node in (local, r1, r2):  # a request to either remote is relayed through the local node
        assert greedy(api_node, PROMPT) == reference[PROMPT]
        plan = plan_nodes(api_node)
        assert len(plan) == 3
        assert plan[1] == local.node_id
