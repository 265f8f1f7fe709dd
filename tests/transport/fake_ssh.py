"""A stand-in for ``ssh -W HOST:PORT DEST`` (tests of the SSH link without an SSH server): connects to
HOST:PORT itself and copies bytes between it and stdin/stdout. Destination ``refuse`` fails as OpenSSH does
for a refused key; ``hang`` never connects."""

from __future__ import annotations

import os
import select
import socket
import sys
import time

args = sys.argv[1:]
target = args[args.index("-W") + 1]
destination = args[-1]
if destination.endswith("refuse"):
    sys.stderr.write(f"{destination}: Permission denied (publickey).\n")
    sys.exit(255)
if destination.endswith("hang"):
    time.sleep(60)
    sys.exit(255)
host, _, port = target.rpartition(":")
try:
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
except OSError:
    sys.stderr.write("channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed\n")
    sys.exit(255)
open_in = True
while True:
    ready, _, _ = select.select([0, sock] if open_in else [sock], [], [])
    if 0 in ready:
        data = os.read(0, 1 << 16)
        if not data:
            open_in = False
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(data)
    if sock in ready:
        data = sock.recv(1 << 16)
        if not data:
            sys.exit(0)
        view = memoryview(data)
        while view:
            view = view[os.write(1, view) :]
