"""ssh:// addresses, the ssh command line exo builds, and ssh's stderr turned into one-line diagnoses."""

from __future__ import annotations

import pytest

from exo_core.transport.ssh.diagnose import diagnose
from exo_core.transport.ssh.link import ssh_argv
from exo_core.transport.ssh.route import SshRoute, is_ssh_url, parse_ssh_url


@pytest.mark.parametrize(
    ("url", "destination", "ssh_port", "host", "port"),
    [
        ("ssh://vm", "vm", None, "127.0.0.1", 50051),
        ("ssh://ubuntu@vm.example.com/50052", "ubuntu@vm.example.com", None, "127.0.0.1", 50052),
        ("ssh://me@lab:2222/50051", "me@lab", 2222, "127.0.0.1", 50051),
        ("ssh://me@lab:2222/10.0.0.7:50060", "me@lab", 2222, "10.0.0.7", 50060),
        ("ssh://me@[2001:db8::1]:22/[::1]:50051", "me@[2001:db8::1]", 22, "::1", 50051),
        ("ssh://host-alias/", "host-alias", None, "127.0.0.1", 50051),
    ],
)
def test_ssh_urls_parse(url: str, destination: str, ssh_port: int | None, host: str, port: int) -> None:
    route, h, p = parse_ssh_url(url)
    assert (route.destination, route.port, h, p) == (destination, ssh_port, host, port)
    assert parse_ssh_url(route.url(h, p)) == (route, h, p)  # url() writes what parse reads
    assert is_ssh_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://",
        "ssh://me@lab:0/50051",
        "ssh://me@lab/70000",
        "ssh://me@lab/::1:50051",
        "ssh://-oProxyCommand=evil/50051",
        "ssh://me lab/50051",
        "vm:50051",
    ],
)
def test_bad_ssh_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_ssh_url(url)


def test_route_parse_forms() -> None:
    assert SshRoute.parse("me@lab") == SshRoute("me@lab")
    assert SshRoute.parse("me@lab:2222") == SshRoute("me@lab", 2222)
    assert SshRoute.parse("ssh://lab") == SshRoute("lab")
    assert SshRoute.parse("[fe80::1]:2200") == SshRoute("[fe80::1]", 2200)
    assert str(SshRoute("me@lab", 2222)) == "me@lab:2222"
    with pytest.raises(ValueError, match="leading '-'"):
        SshRoute.parse("-F/etc/passwd")


def test_argv_forwards_stdio_and_keeps_user_options_first() -> None:
    argv = ssh_argv(
        "ssh -F '/my dir/cfg' -o ServerAliveInterval=30", SshRoute("me@lab", 2222), "::1", 50051, 4.2
    )
    assert argv[:5] == [
        "ssh",
        "-F",
        "/my dir/cfg",
        "-o",
        "ServerAliveInterval=30",
    ]  # ssh keeps the first value
    assert argv[-5:] == ["-p", "2222", "-W", "[::1]:50051", "me@lab"]
    for option in ("BatchMode=yes", "ExitOnForwardFailure=yes", "ServerAliveCountMax=3", "ConnectTimeout=5"):
        assert option in argv
    assert ssh_argv(None, SshRoute("me@[fe80::1]"), "127.0.0.1", 1, 1)[-3:] == [
        "-W",
        "127.0.0.1:1",
        "me@fe80::1",
    ]


# What OpenSSH 9 prints (LC_ALL=C) for each failure, and the words the diagnosis must carry.
CASES = [
    (
        [
            "@@@@@@@@@@@@@",
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            "Host key verification failed.",
        ],
        255,
        "the host key of lab changed since it was recorded in known_hosts",
    ),
    (["Host key verification failed."], 255, "host key verification failed for lab"),
    (
        ["root@lab: Permission denied (publickey,password)."],
        255,
        "refused our SSH key (permission denied (publickey,password))",
    ),
    (["ssh: Could not resolve hostname lab: Name or service not known"], 255, "cannot resolve lab"),
    (["ssh: connect to host lab port 22: Connection refused"], 255, "nothing accepts SSH connections at lab"),
    (
        ["channel 0: open failed: connect failed: Connection refused", "stdio forwarding failed"],
        255,
        "could not connect to 127.0.0.1:50051 on its side: the remote port is closed",
    ),
    (["channel 0: open failed: administratively prohibited: open failed"], 255, "forbids forwarding"),
    (["ssh: connect to host lab port 22: Connection timed out"], 255, "timed out"),
    (["Timeout, server lab not responding."], 255, "stopped answering keepalives"),
    (["ssh: connect to host lab port 22: No route to host"], 255, "no route to host"),
    ([], -9, "was stopped by SIGKILL"),
    (["something new and strange."], 255, "ssh to lab failed: something new and strange"),
    ([], 255, "exited with status 255"),
]


@pytest.mark.parametrize(("stderr", "code", "says"), CASES)
def test_diagnoses(stderr: list[str], code: int, says: str) -> None:
    line = diagnose(stderr, code, SshRoute("root@lab"), "127.0.0.1", 50051)
    assert line is not None and says in line and "\n" not in line


def test_nothing_to_say_for_a_clean_exit() -> None:
    assert diagnose([], 0, SshRoute("lab"), "127.0.0.1", 50051) is None


def test_command_words_expand_home_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/me")
    monkeypatch.setenv("EXO_TEST_KEY", "/keys/exo")
    argv = ssh_argv("ssh -F ~/.ssh/exo_config -i $EXO_TEST_KEY", SshRoute("lab"), "127.0.0.1", 1, 1)
    assert argv[:5] == ["ssh", "-F", "/home/me/.ssh/exo_config", "-i", "/keys/exo"]


def test_the_host_key_advice_is_a_command_ssh_accepts() -> None:
    line = diagnose(["Host key verification failed."], 255, SshRoute("me@lab", 2222), "127.0.0.1", 1)
    assert line is not None and "`ssh -p 2222 me@lab`" in line
