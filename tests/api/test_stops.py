from __future__ import annotations

from exo_core.api import TokenEvent
from exo_core.api.stops import StopFilter


def run(stops: list[str], deltas: list[str]) -> tuple[list[str], bool, list[list[str]]]:
    """Feed deltas; returns the released texts, whether it stopped, and the tokens released each time."""
    f = StopFilter(stops)
    texts: list[str] = []
    token_batches: list[list[str]] = []
    for i, d in enumerate(deltas):
        released = f.feed(TokenEvent(i, d))
        texts.append(released.text)
        token_batches.append([t.text for t in released.tokens])
        if f.stopped:
            return texts, True, token_batches
    rest = f.flush()
    texts.append(rest.text)
    token_batches.append([t.text for t in rest.tokens])
    return texts, False, token_batches


def test_no_stops_releases_everything_at_once() -> None:
    texts, stopped, tokens = run([], ["a", "b", ""])
    assert texts == ["a", "b", "", ""] and not stopped
    assert tokens == [["a"], ["b"], [""], []]


def test_stop_split_across_deltas_is_cut_and_never_leaks() -> None:
    texts, stopped, tokens = run(["STOP"], ["The answer is 4", "2. S", "T", "OP", " more"])
    assert stopped
    assert "".join(texts) == "The answer is 42. "
    assert texts == ["The answer is 4", "2. ", "", ""]  # "S", "ST", "STO" were held back
    # the token "2. S" is released at the stop (its text is partly before the cut); "T", "OP" never
    assert tokens == [["The answer is 4"], [], [], ["2. S"]]


def test_false_prefix_is_released_when_it_turns_out_not_to_be_a_stop() -> None:
    texts, stopped, _ = run(["STOP"], ["a S", "Tx", "y"])
    assert not stopped
    assert texts == ["a ", "STx", "y", ""]


def test_held_text_is_flushed_at_the_end() -> None:
    texts, stopped, tokens = run(["STOP"], ["abc ST"])
    assert not stopped
    assert texts == ["abc ", "ST"]
    assert tokens == [[], ["abc ST"]]


def test_earliest_of_several_stops_wins() -> None:
    texts, stopped, _ = run(["world", "lo w"], ["hello world"])
    assert stopped and "".join(texts) == "hel"


def test_stop_inside_one_delta_and_at_the_very_start() -> None:
    assert run(["\n\n"], ["line\n\nnext"])[0] == ["line"]
    texts, stopped, tokens = run(["<|end|>"], ["<|end|>tail"])
    assert stopped and texts == [""] and tokens == [[]]


def test_stop_spanning_many_tokens_with_multibyte_text() -> None:
    texts, stopped, _ = run(["→ fin"], ["été ", "→", " ", "f", "in", "!"])
    assert stopped and "".join(texts) == "été "
