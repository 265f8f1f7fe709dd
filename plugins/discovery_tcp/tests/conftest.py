from __future__ import annotations

import sys
from pathlib import Path

# the recording sink, discovery processes and namespace helpers shared with the UDP tests
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "discovery_udp" / "tests"))
