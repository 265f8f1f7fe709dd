"""Reading and validating a peers.json file (the seed's schema).

::

    {
      "peers": {
        "remote-node-1": {
          "address": "localhost:49703",
          "device_capabilities": {
            "model": "MacBook Pro", "chip": "Apple M2 Max", "memory": 32768,
            "flops": {"fp32": 13.49, "fp16": 26.98, "int8": 53.96}
          }
        },
        "remote-node-2": {"address": "10.0.0.152", "port": 50051},
        "cloud-vm": {"ssh": "ubuntu@vm.example.com"},
        "lab-box": {"address": "ssh://me@lab.example.org:2222/50052"}
      }
    }

``address`` is ``host:port`` (``[v6]:port`` for IPv6), or a bare host with a separate ``port``.
``ssh`` (``[user@]host[:sshport]``) reaches the peer over an SSH link (``ssh -W``) instead of TCP: then
``address`` and ``port`` are the node's address as the SSH server sees it, 127.0.0.1 and 50051 unless
given; the URL form ``ssh://[user@]host[:sshport][/[remote-host:]port]`` in ``address`` says the same.
``device_capabilities`` is optional (the handshake gives a peer's real capabilities). A key is only a
label; the entry whose key is this node's id is ignored, so one file can serve every node.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from exo_core.discovery import DiscoveredPeer
from exo_core.errors import ConfigError
from exo_core.transport.ssh.route import (
    DEFAULT_NODE_PORT,
    DEFAULT_REMOTE_HOST,
    SshRoute,
    is_ssh_url,
    parse_ssh_url,
)

log = logging.getLogger(__name__)

#: A peers file larger than this is refused (it is a short hand-written list).
MAX_FILE_BYTES = 1024 * 1024
_PEER_FIELDS = {"address", "port", "ssh", "device_capabilities"}
_CAP_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "model": (str, "a string"),
    "chip": (str, "a string"),
    "memory": ((int, float), "a number (MB)"),
    "flops": (dict, "an object {fp32, fp16, int8}"),
}
_FLOPS_FIELDS = ("fp32", "fp16", "int8")


class PeersFileError(ConfigError):
    """The peers file is missing, unreadable or invalid. The message names the file and the field."""


def read_bytes(path: Path) -> bytes:
    """Read the file, bounded in size. Raises :class:`PeersFileError`."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PeersFileError(
            f"{path}: peers file not found (create it, or fix --discovery-config-path)"
        ) from None
    except OSError as exc:
        raise PeersFileError(f"{path}: cannot read the peers file: {exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PeersFileError(f"{path}: peers file is larger than {MAX_FILE_BYTES} bytes")
    return data


def parse(data: bytes, path: Path, *, own_id: str) -> dict[str, DiscoveredPeer]:
    """Parse a peers file's content into peers by key, without this node's own entry.

    Raises:
        PeersFileError: naming the file and the field, e.g. ``peers.json: peers.node-2.address: ...``.
    """

    def fail(where: str, problem: str) -> PeersFileError:
        return PeersFileError(f"{path}: {where}: {problem}")

    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PeersFileError(f"{path}: not UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PeersFileError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise PeersFileError(f"{path}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise PeersFileError(f'{path}: expected a JSON object with a "peers" field, got {_kind(doc)}')
    if "peers" not in doc:
        raise fail("peers", 'missing (expected {"peers": {"<name>": {"address": "host:port"}}})')
    for extra in sorted(set(doc) - {"peers"}):
        log.warning("%s: ignoring unknown top-level field %r", path, extra)
    entries = doc["peers"]
    if not isinstance(entries, dict):
        raise fail("peers", f"expected an object mapping names to peers, got {_kind(entries)}")
    peers: dict[str, DiscoveredPeer] = {}
    for key, entry in entries.items():
        where = f"peers.{key}"
        if not key.strip():
            raise fail(where, "peer names must not be empty")
        if not isinstance(entry, dict):
            raise fail(where, f'expected an object with an "address", got {_kind(entry)}')
        for extra in sorted(set(entry) - _PEER_FIELDS):
            log.warning(
                "%s: %s: ignoring unknown field %r (expected %s)",
                path,
                where,
                extra,
                ", ".join(sorted(_PEER_FIELDS)),
            )
        ssh, host, port = _route(entry, where, fail)
        caps = _capabilities(entry.get("device_capabilities"), f"{where}.device_capabilities", fail)
        if key == own_id:
            continue  # this node's own entry: one file can be shared by every node
        peers[key] = DiscoveredPeer(key=key, host=host, port=port, capabilities=caps, ssh=ssh)
    return peers


def load(path: Path, *, own_id: str) -> tuple[bytes, dict[str, DiscoveredPeer]]:
    """Read and parse the file; returns its content (to detect changes) and its peers."""
    data = read_bytes(path)
    return data, parse(data, path, own_id=own_id)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _route(entry: dict[str, Any], where: str, fail: Any) -> tuple[SshRoute | None, str, int]:
    """(SSH hop or None, host, port) of an entry: plain TCP, an ``ssh`` field, or an ``ssh://`` address."""
    address = entry.get("address")
    if isinstance(address, str) and is_ssh_url(address):
        if "ssh" in entry:
            raise fail(f"{where}.ssh", "given twice: in ssh and as the ssh:// address; keep one")
        try:
            ssh, host, port = parse_ssh_url(address.strip())
        except ValueError as exc:
            raise fail(f"{where}.address", str(exc)) from None
        if "port" in entry and _port(entry["port"]) != port:
            raise fail(f"{where}.port", f"{entry['port']!r} disagrees with the port in address {address!r}")
        return ssh, host, port
    if "ssh" not in entry:
        return (None, *_address(entry, where, fail))
    text = entry["ssh"]
    if not isinstance(text, str):
        raise fail(f"{where}.ssh", f'expected "[user@]host[:sshport]", got {_kind(text)}')
    try:
        ssh = SshRoute.parse(text)
    except ValueError as exc:
        raise fail(f"{where}.ssh", str(exc)) from None
    remote = {"address": DEFAULT_REMOTE_HOST, **entry}
    if "port" not in entry and _split_host_port(str(remote["address"]).strip())[1] is None:
        remote["port"] = DEFAULT_NODE_PORT
    return (ssh, *_address(remote, where, fail))


def _address(entry: dict[str, Any], where: str, fail: Any) -> tuple[str, int]:
    if "address" not in entry:
        raise fail(f"{where}.address", 'missing (expected "host:port", or "host" and a separate "port")')
    address = entry["address"]
    if not isinstance(address, str) or not address.strip() or any(c.isspace() for c in address.strip()):
        raise fail(f"{where}.address", f'expected "host:port" or a host name, got {address!r}')
    address = address.strip()
    host, port_text = _split_host_port(address)
    if not host:
        raise fail(f"{where}.address", f"no host in {address!r}")
    if "port" in entry:
        port = _port(entry["port"])
        if port is None:
            raise fail(f"{where}.port", f"expected a port number 1-65535, got {entry['port']!r}")
        if port_text is not None and _port(port_text) != port:
            raise fail(f"{where}.port", f"{entry['port']!r} disagrees with the port in address {address!r}")
        return host, port
    if port_text is None:
        raise fail(
            f"{where}.port", f'missing: address {address!r} has no port (write "host:port" or add "port")'
        )
    port = _port(port_text)
    if port is None:
        raise fail(f"{where}.address", f"expected a port number 1-65535 after the colon, got {address!r}")
    return host, port


def _port(value: Any) -> int | None:
    """A port from an int or a decimal string, or ``None`` when it is not one."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        return None
    return value


def _split_host_port(address: str) -> tuple[str, str | None]:
    """``host:port`` / ``[v6]:port`` / ``host`` / a bare IPv6 literal -> (host, port text or None)."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return address, None
        rest = address[end + 1 :]
        return address[1:end], (rest[1:] if rest.startswith(":") else None)
    if address.count(":") > 1:  # a bare IPv6 literal: its port must be given separately
        return address, None
    host, sep, port = address.partition(":")
    return host, (port if sep else None)


def _capabilities(value: Any, where: str, fail: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(where, f"expected an object, got {_kind(value)}")
    for name, (kind, expected) in _CAP_FIELDS.items():
        if name not in value:
            raise fail(
                f"{where}.{name}", "missing (needs model, chip, memory in MB, flops {fp32, fp16, int8})"
            )
        if isinstance(value[name], bool) or not isinstance(value[name], kind):
            raise fail(f"{where}.{name}", f"expected {expected}, got {_kind(value[name])}")
    if not _non_negative(value["memory"]):
        raise fail(f"{where}.memory", f"expected megabytes >= 0, got {value['memory']!r}")
    flops = value["flops"]
    for name in _FLOPS_FIELDS:
        if name not in flops:
            raise fail(f"{where}.flops.{name}", "missing (TFLOPS, a number >= 0)")
        if not _non_negative(flops[name]):
            raise fail(f"{where}.flops.{name}", f"expected TFLOPS >= 0, got {flops[name]!r}")
    return {
        "model": value["model"],
        "chip": value["chip"],
        "memory": value["memory"],
        "flops": {name: flops[name] for name in _FLOPS_FIELDS},
    }


def _non_negative(value: Any) -> bool:
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and value >= 0
    )
