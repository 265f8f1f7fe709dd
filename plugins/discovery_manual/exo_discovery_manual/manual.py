"""The ``manual`` discovery module: peers listed in a peers.json file, reloaded when the file changes.

The file is checked every ``poll_interval`` seconds (its size, modification time and inode; the content
is re-read only when one of them changed, and re-parsed only when its hash changed). Added, removed and
changed peers are reported to the sink. A broken edit keeps the last good list and is logged; a broken
file at start is a :class:`~exo_discovery_manual.peers_file.PeersFileError`. Health checks and
reconnecting to unreachable peers are the transport's job: this module only says who the peers are.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from exo_core.discovery import DiscoveredPeer, DiscoverySink
from exo_discovery_manual import peers_file
from exo_discovery_manual.peers_file import PeersFileError

log = logging.getLogger(__name__)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _same(a: DiscoveredPeer, b: DiscoveredPeer) -> bool:
    return a == b and a.capabilities == b.capabilities


class ManualDiscovery:
    """Peers from a peers.json file.

    Args:
        config_path: the peers file.
        node_id: this node's id; the file's entry with this key is ignored.
        poll_interval: seconds between two checks of the file.
    """

    def __init__(self, config_path: Path, *, node_id: str, poll_interval: float = 1.0) -> None:
        self.config_path = Path(config_path)
        self.node_id = node_id
        self.poll_interval = poll_interval
        self.peers: dict[str, DiscoveredPeer] = {}
        self._signature: tuple[int, int, int] | None = None
        self._digest = b""

    async def run(
        self, sink: DiscoverySink, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Report the file's peers, then follow its changes until cancelled.

        Raises:
            PeersFileError: the file is missing or invalid at start (before ``task_status.started()``).
        """
        signature = _signature(self.config_path)
        data, peers = await anyio.to_thread.run_sync(self._load)
        self._remember(signature, data)
        await self._apply(sink, peers)
        log.info("manual discovery: %d peer(s) from %s", len(peers), self.config_path)
        task_status.started()
        while True:
            await anyio.sleep(self.poll_interval)
            await self.check(sink)

    def _load(self) -> tuple[bytes, dict[str, DiscoveredPeer]]:
        return peers_file.load(self.config_path, own_id=self.node_id)

    def _remember(self, signature: tuple[int, int, int] | None, data: bytes) -> None:
        self._signature = signature
        self._digest = hashlib.sha256(data).digest()

    async def check(self, sink: DiscoverySink) -> None:
        """Reload the file if it changed; on error keep the last good peers and log why."""
        signature = _signature(self.config_path)
        if signature == self._signature:
            return
        try:
            data = await anyio.to_thread.run_sync(peers_file.read_bytes, self.config_path)
        except PeersFileError as exc:
            self._signature = signature
            log.warning("%s; keeping the last good list of %d peer(s)", exc, len(self.peers))
            return
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            self._signature = signature
            return
        try:
            peers = peers_file.parse(data, self.config_path, own_id=self.node_id)
        except PeersFileError as exc:
            self._signature = signature
            log.warning("%s; keeping the last good list of %d peer(s)", exc, len(self.peers))
            return
        self._remember(signature, data)
        log.info("%s changed: %d peer(s)", self.config_path, len(peers))
        await self._apply(sink, peers)

    async def _apply(self, sink: DiscoverySink, peers: dict[str, DiscoveredPeer]) -> None:
        old = self.peers
        self.peers = peers
        for key in old.keys() - peers.keys():
            log.info("peer %s removed from %s", key, self.config_path)
            await sink.peer_lost(key)
        for key, peer in peers.items():
            if key not in old or not _same(old[key], peer):
                log.info("peer %s at %s (from %s)", key, peer.address, self.config_path)
                await sink.peer_found(peer)
