"""The ``manual`` discovery module: peers.json loading, hot reload, broken edits, error messages."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from exo_discovery_manual.manual import ManualDiscovery
from exo_discovery_manual.peers_file import PeersFileError, load

from exo_core.discovery import DiscoveredPeer
from exo_core.lan.testing import RecordingSink

CAPS = {
    "model": "MacBook Pro",
    "chip": "Apple M2 Max",
    "memory": 32768,
    "flops": {"fp32": 13.49, "fp16": 26.98, "int8": 53.96},
}


def write(path: Path, doc: Any) -> None:
    """Replace the file atomically, as editors that save safely do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


def test_seed_schema_both_address_forms_and_own_entry(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    write(
        path,
        {
            "peers": {
                "remote-node-1": {"address": "localhost:49703", "device_capabilities": CAPS},
                "remote-node-2": {"address": "10.0.0.152", "port": 50051},
                "v6": {"address": "[::1]:50052"},
                "v6-bare": {"address": "fe80::1", "port": "50053"},
                "me": {"address": "127.0.0.1:50051", "device_capabilities": CAPS},
            }
        },
    )
    _, peers = load(path, own_id="me")
    assert peers == {
        "remote-node-1": DiscoveredPeer("remote-node-1", "localhost", 49703),
        "remote-node-2": DiscoveredPeer("remote-node-2", "10.0.0.152", 50051),
        "v6": DiscoveredPeer("v6", "::1", 50052),
        "v6-bare": DiscoveredPeer("v6-bare", "fe80::1", 50053),
    }
    assert peers["remote-node-1"].capabilities == CAPS
    assert peers["remote-node-2"].capabilities is None
    assert peers["v6"].address == "[::1]:50052"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"peers.json: invalid JSON at line 1 column 2"),
        ("[]", r"peers.json: expected a JSON object with a \"peers\" field, got a list"),
        ({}, r"peers.json: peers: missing"),
        ({"peers": []}, r"peers.json: peers: expected an object mapping names to peers, got a list"),
        ({"peers": {"a": "1.2.3.4:5"}}, r"peers.json: peers.a: expected an object"),
        ({"peers": {"a": {"port": 5}}}, r"peers.json: peers.a.address: missing"),
        ({"peers": {"a": {"address": "h"}}}, r"peers.json: peers.a.port: missing: address 'h' has no port"),
        ({"peers": {"a": {"address": "h:x"}}}, r"peers.a.address: expected a port number 1-65535"),
        ({"peers": {"a": {"address": "h:70000"}}}, r"peers.a.address: expected a port number"),
        ({"peers": {"a": {"address": "h", "port": True}}}, r"peers.a.port: expected a port number 1-65535"),
        (
            {"peers": {"a": {"address": "h:1", "port": 2}}},
            r"peers.a.port: 2 disagrees with the port in address",
        ),
        ({"peers": {"a": {"address": "a b:1"}}}, r"peers.a.address: expected \"host:port\""),
        ({"peers": {"a": {"address": ":1"}}}, r"peers.a.address: no host in ':1'"),
        (
            {"peers": {"a": {"address": "h:1", "device_capabilities": {**CAPS, "chip": 3}}}},
            r"peers.a.device_capabilities.chip: expected a string, got a number",
        ),
        (
            {"peers": {"a": {"address": "h:1", "device_capabilities": {**CAPS, "memory": -1}}}},
            r"peers.a.device_capabilities.memory: expected megabytes >= 0",
        ),
        (
            {
                "peers": {
                    "a": {"address": "h:1", "device_capabilities": {**CAPS, "flops": {"fp32": 1, "fp16": 1}}}
                }
            },
            r"peers.a.device_capabilities.flops.int8: missing",
        ),
        (
            {
                "peers": {
                    "a": {
                        "address": "h:1",
                        "device_capabilities": {k: v for k, v in CAPS.items() if k != "model"},
                    }
                }
            },
            r"peers.a.device_capabilities.model: missing",
        ),
    ],
)
def test_invalid_files_name_the_file_and_the_field(tmp_path: Path, content: Any, message: str) -> None:
    path = tmp_path / "peers.json"
    write(path, content)
    with pytest.raises(PeersFileError, match=message) as info:
        load(path, own_id="me")
    assert str(info.value).startswith(str(path))


def test_unknown_fields_are_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "peers.json"
    write(path, {"peers": {"a": {"address": "h:1", "adress": "typo"}}, "version": 2})
    _, peers = load(path, own_id="me")
    assert list(peers) == ["a"]
    assert "ignoring unknown field 'adress'" in caplog.text
    assert "ignoring unknown top-level field 'version'" in caplog.text


async def test_missing_or_broken_file_fails_before_start(tmp_path: Path) -> None:
    sink = RecordingSink()
    async with anyio.create_task_group() as tg:
        with pytest.raises(
            PeersFileError, match=r"peers file not found \(create it, or fix --discovery-config-path\)"
        ):
            await tg.start(ManualDiscovery(tmp_path / "nope.json", node_id="me").run, sink)
        write(tmp_path / "bad.json", {"peers": {"a": {}}})
        with pytest.raises(PeersFileError, match=r"bad.json: peers.a.address: missing"):
            await tg.start(ManualDiscovery(tmp_path / "bad.json", node_id="me").run, sink)
    assert sink.events == []


async def test_hot_reload_add_change_remove_and_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exo_discovery_manual")
    path = tmp_path / "peers.json"
    write(path, {"peers": {"a": {"address": "127.0.0.1:50001"}, "me": {"address": "127.0.0.1:50000"}}})
    sink = RecordingSink()
    discovery = ManualDiscovery(path, node_id="me", poll_interval=0.05)
    async with anyio.create_task_group() as tg:
        await tg.start(discovery.run, sink)
        assert sink.events == [("found", "a")]  # reported before started()

        write(
            path,
            {"peers": {"a": {"address": "127.0.0.1:50001"}, "b": {"address": "127.0.0.2", "port": 50002}}},
        )
        await sink.wait_for(lambda s: "b" in s.peers, within=5)
        assert sink.peers["b"].address == "127.0.0.2:50002"

        write(path, {"peers": {"a": {"address": "127.0.0.1:50011"}, "b": {"address": "127.0.0.2:50002"}}})
        await sink.wait_for(lambda s: s.peers["a"].port == 50011, within=5)

        write(
            path,
            {
                "peers": {
                    "a": {"address": "127.0.0.1:50011", "device_capabilities": CAPS},
                    "b": {"address": "127.0.0.2:50002"},
                }
            },
        )
        await sink.wait_for(lambda s: s.peers["a"].capabilities == CAPS, within=5)

        write(path, {"peers": {"b": {"address": "127.0.0.2:50002"}}})
        await sink.wait_for(lambda s: "a" not in s.peers, within=5)

        events = list(sink.events)
        write(path, '{"peers": {"b": {"address": "127.0.0.2:50002"}, "c": ')  # a half-saved edit
        for _ in range(100):  # bounded: until the warning shows up
            if "keeping the last good list of 1 peer(s)" in caplog.text:
                break
            await anyio.sleep(0.05)
        assert "invalid JSON" in caplog.text and str(path) in caplog.text
        assert sink.events == events and set(sink.peers) == {"b"}

        path.unlink()  # deleted: also keeps the last good list
        await anyio.sleep(0.3)
        assert "peers file not found" in caplog.text and set(sink.peers) == {"b"}

        write(path, {"peers": {"b": {"address": "127.0.0.2:50002"}, "c": {"address": "127.0.0.3:50003"}}})
        await sink.wait_for(lambda s: set(s.peers) == {"b", "c"}, within=5)
        tg.cancel_scope.cancel()
    assert sink.events == [
        ("found", "a"),
        ("found", "b"),
        ("found", "a"),
        ("found", "a"),
        ("lost", "a"),
        ("found", "c"),
    ]


async def test_touching_the_file_without_changes_reports_nothing(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    doc = {"peers": {"a": {"address": "127.0.0.1:50001"}}}
    write(path, doc)
    sink = RecordingSink()
    discovery = ManualDiscovery(path, node_id="me", poll_interval=0.02)
    async with anyio.create_task_group() as tg:
        await tg.start(discovery.run, sink)
        write(path, doc)  # same content, new inode and mtime
        write(path, {"peers": {"me": {"address": "127.0.0.1:1"}, **doc["peers"]}})  # only our own entry
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert sink.events == [("found", "a")]


def test_ssh_entries(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    write(
        path,
        {
            "peers": {
                "vm": {"ssh": "ubuntu@vm.example.com"},
                "lab": {"ssh": "me@lab:2222", "port": 50052},
                "inner": {"ssh": "jump", "address": "10.0.0.7:50060"},
                "url": {"address": "ssh://me@lab:2222/50053"},
                "url-host": {"address": "ssh://lab/[::1]:50054", "device_capabilities": CAPS},
            }
        },
    )
    _, peers = load(path, own_id="me")
    routes = {k: (p.ssh and (p.ssh.destination, p.ssh.port), p.host, p.port) for k, p in peers.items()}
    assert routes == {
        "vm": (("ubuntu@vm.example.com", None), "127.0.0.1", 50051),
        "lab": (("me@lab", 2222), "127.0.0.1", 50052),
        "inner": (("jump", None), "10.0.0.7", 50060),
        "url": (("me@lab", 2222), "127.0.0.1", 50053),
        "url-host": (("lab", None), "::1", 50054),
    }
    assert peers["lab"].address == "ssh://me@lab:2222/50052"
    assert peers["url-host"].capabilities == CAPS


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"ssh": 7}, 'peers.x.ssh: expected "[user@]host[:sshport]", got a number'),
        ({"ssh": "-oProxyCommand=x"}, "peers.x.ssh: bad SSH destination"),
        ({"ssh": "me@lab:99999"}, "peers.x.ssh: bad port 99999"),
        ({"ssh": "lab", "port": 0}, "peers.x.port: expected a port number"),
        ({"address": "ssh://lab/50051", "ssh": "lab"}, "peers.x.ssh: given twice"),
        ({"address": "ssh://lab/50051", "port": 50052}, "peers.x.port: 50052 disagrees"),
        ({"address": "ssh:///50051"}, "peers.x.address: no SSH host"),
    ],
)
def test_bad_ssh_entries_name_the_field(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    path = tmp_path / "peers.json"
    write(path, {"peers": {"x": entry}})
    with pytest.raises(PeersFileError, match=re.escape(message)):
        load(path, own_id="me")
