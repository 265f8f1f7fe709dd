"""The seed's deployment for real: nodes reached only through ``ssh -N -L`` tunnels of a real sshd.

The remote nodes start knowing nothing of the local node; the local node's peers.json points at the
local ends of the tunnels. One tunnel per remote is enough because a connection carries traffic both
ways, and two remotes that cannot reach each other are joined by the local node relaying.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exo_core.nodeproc import NodeProcess, find_free_ports, peers_file
from exo_core.transport.ssh.testing import Sshd, running_sshd, sshd_binary

from .support import PROMPTS, greedy, no_peers, plan_nodes

pytestmark = pytest.mark.timeout(300)
PROMPT = PROMPTS[0]
Start = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if sshd_binary() is None:
        pytest.fail("sshd is not installed: `make test` installs openssh-server")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture
def single_node_answer(reference: dict[str, list[str]]) -> list[str]:
    return reference[PROMPT]


def test_one_tunnel_is_enough(
    exo_node: Start, sshd: Sshd, tmp_path: Path, single_node_answer: list[str]
) -> None:
    remote = exo_node(*no_peers(tmp_path, "remote"))  # started with no knowledge of the local node
    (local_port,) = find_free_ports(1)
    with sshd.forward(local_port, "127.0.0.1", remote.node_port):
        peers = peers_file(tmp_path / "peers.json", {"remote-node-1": f"127.0.0.1:{local_port}"})
        local = exo_node("--discovery-module", "manual", "--discovery-config-path", str(peers))
        topo = local.wait_for_nodes(2)
        remote.wait_for_nodes(2)  # it learned the local node from the tunnelled connection alone
        assert {n["id"] for n in topo["nodes"]} == {local.node_id, remote.node_id}
        assert greedy(local, PROMPT) == single_node_answer
        assert sorted(plan_nodes(local)) == sorted([local.node_id, remote.node_id])
        for node in (local, remote):  # both hold layers
            assert node.get("/v1/topology")["loaded_shards"], f"node {node.node_id} holds no layers"
        # the remote serves too, reaching the local node back over the same tunnelled connection
        assert greedy(remote, PROMPT) == single_node_answer


def test_two_remotes_joined_by_the_local_node(
    exo_node: Start, sshd: Sshd, tmp_path: Path, single_node_answer: list[str]
) -> None:
    r1 = exo_node(*no_peers(tmp_path, "r1"))
    r2 = exo_node(*no_peers(tmp_path, "r2"))
    q1, q2 = find_free_ports(2)
    with sshd.forward(q1, "127.0.0.1", r1.node_port), sshd.forward(q2, "127.0.0.1", r2.node_port):
        peers = peers_file(tmp_path / "peers.json", {"net-a": f"127.0.0.1:{q1}", "net-b": f"127.0.0.1:{q2}"})
        local = exo_node("--discovery-module", "manual", "--discovery-config-path", str(peers))
        for node in (local, r1, r2):
            node.wait_for_nodes(3)
        topo = local.get("/v1/topology")
        pairs = {frozenset((c["a"], c["b"])) for c in topo["connections"]}
        assert pairs == {frozenset((local.node_id, r1.node_id)), frozenset((local.node_id, r2.node_id))}
        for api_node in (local, r1, r2):
            assert greedy(api_node, PROMPT) == single_node_answer
            plan = plan_nodes(api_node)
            assert len(plan) == 3
            assert plan[1] == local.node_id  # the only order whose hidden-state hops are all direct
