"""Stop strings end requests early while the ring is still working on the next token: 20 of them in a row
on a 2-node ring must each stop where the string appears and leave no ERROR in either node's log (once, a
decode step still in flight after the request was freed logged a traceback on every stop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import PROMPTS, Start, greedy, two_nodes

pytestmark = pytest.mark.timeout(300)


def test_twenty_stop_string_requests_log_no_error(
    exo_node: Start, tmp_path: Path, reference: dict[str, list[str]]
) -> None:
    local, remote = two_nodes(exo_node, tmp_path)
    done = 0
    for i in range(20):
        prompt = PROMPTS[i % len(PROMPTS)]
        tokens = reference[prompt]
        cut = 2 + i % 3  # stop on the 3rd to 5th token of the greedy answer
        stop = tokens[cut]
        expected = "".join(tokens[:cut])
        if not stop.strip() or stop in expected:
            continue  # whitespace, or a string that appears earlier than the token it was picked from
        out = local.post(
            "/v1/chat/completions",
            {
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 20,
                "temperature": 0,
                "stop": [stop],
            },
        )
        choice = out["choices"][0]
        assert choice["finish_reason"] == "stop" and choice["message"]["content"] == expected, (prompt, stop)
        done += 1
    assert done >= 15
    assert greedy(local, PROMPTS[0]) == reference[PROMPTS[0]]  # the ring still answers in full
    for node in (local, remote):
        log = node.log_path.read_text(errors="replace")
        errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
        assert errors == [], f"node {node.node_id}:\n" + "\n".join(errors[:10])
