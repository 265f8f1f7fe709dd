from __future__ import annotations

import sys
from pathlib import Path

# the recording sink shared with the UDP and TCP discovery tests
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "discovery_udp" / "tests"))
