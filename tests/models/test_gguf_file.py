"""The fast GGUF parser against gguf.GGUFReader, and dequantization of every supported type."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from exo_core.models.errors import ModelFormatError
from exo_core.models.gguf_file import GGUFFile, open_gguf
from exo_core.models.source import ModelSource

QUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# Upper bound of |error| / max|x| for a row of standard-normal values, per type.
TOLERANCE = {
    "F32": 0,
    "F16": 1e-3,
    "BF16": 4e-3,
    "Q8_0": 1e-2,
    "Q4_0": 0.15,
    "Q4_1": 0.1,
    "Q5_0": 0.07,
    "Q5_1": 0.05,
}
K_QUANTS = {"Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}


def _write(path: Path, tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]]) -> Path:
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_string("test.unicode", "héllo ✓")
    w.add_array("test.ints", [1, -2, 3])
    w.add_array("test.strings", ["a", "bé", ""])
    w.add_float32("test.float", 0.5)
    w.add_bool("test.flag", True)
    for name, (arr, raw_dtype) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _k_quant_blocks(rng: np.random.Generator, rows: int, cols: int, type_size: int, f16_at: tuple[int, ...]):
    blocks = rng.integers(0, 256, size=(rows, cols // 256, type_size), dtype=np.uint8)
    for off in f16_at:  # keep the f16 scale fields finite and small
        blocks[:, :, off : off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return blocks.reshape(rows, -1)


@pytest.fixture(scope="module")
def quant_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    originals: dict[str, np.ndarray] = {}
    tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType | None]] = {}
    for name in QUANTIZABLE:
        x = rng.standard_normal((8, 256), dtype=np.float32)
        originals[name] = x
        qt = gguf.GGMLQuantizationType[name]
        tensors[name] = (x, None) if name == "F32" else (quantize(x, qt), qt)
    for name, (type_size, f16_at) in K_QUANTS.items():
        raw = _k_quant_blocks(rng, 4, 512, type_size, f16_at)
        tensors[name] = (raw, gguf.GGMLQuantizationType[name])
    return _write(tmp_path_factory.mktemp("q") / "q.gguf", tensors), originals


@pytest.mark.parametrize("name", QUANTIZABLE)
def test_quantized_types_round_trip(quant_file: tuple[Path, dict[str, np.ndarray]], name: str) -> None:
    path, originals = quant_file
    out = GGUFFile(path).tensor(name)
    assert (
        out.dtype == np.float32 and out.shape == (8, 256) and out.flags.c_contiguous and out.flags.writeable
    )
    x = originals[name]
    assert np.abs(out - x).max() <= TOLERANCE[name] * np.abs(x).max() + 1e-7


@pytest.mark.parametrize("name", list(K_QUANTS))
def test_k_quants_dequantize_with_the_right_layout(
    quant_file: tuple[Path, dict[str, np.ndarray]], name: str
) -> None:
    path, _ = quant_file
    reader = gguf.GGUFReader(path)
    (ref_t,) = [t for t in reader.tensors if t.name == name]
    ref = dequantize(ref_t.data, ref_t.tensor_type)
    out = GGUFFile(path).tensor(name)
    assert out.shape == (4, 512) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, ref.reshape(4, 512))


def test_metadata_matches_gguf_reader(quant_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = quant_file
    ours = GGUFFile(path)
    ref = gguf.GGUFReader(path)
    assert ours.metadata["test.unicode"] == "héllo ✓"
    assert list(ours.metadata["test.ints"]) == [1, -2, 3]
    assert ours.metadata["test.strings"] == ["a", "bé", ""]
    assert ours.metadata["test.flag"] is True and ours.metadata["test.float"] == 0.5
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes and info.qtype == int(t.tensor_type)


def test_default_model_header(default_source: ModelSource) -> None:
    g = open_gguf(default_source.path)
    assert open_gguf(default_source.path) is g  # parsed once per process
    assert g.metadata["general.architecture"] == "llama" and g.metadata["llama.block_count"] == 30
    assert (
        len(g.metadata["tokenizer.ggml.tokens"]) == 49152
        and len(g.metadata["tokenizer.ggml.merges"]) == 48900
    )
    assert len(g.tensors) == 272 and "output.weight" not in g.tensors
    assert g.tensors["token_embd.weight"].shape == (49152, 576)
    assert g.tensors["blk.0.ffn_down.weight"].shape == (576, 1536)


def test_corrupt_files_give_clear_errors(
    tmp_path: Path, quant_file: tuple[Path, dict[str, np.ndarray]]
) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        GGUFFile(bad)
    truncated = tmp_path / "t.gguf"
    truncated.write_bytes(quant_file[0].read_bytes()[:200])
    with pytest.raises(ModelFormatError, match=r"truncated|corrupt"):
        GGUFFile(truncated)
    with pytest.raises(ModelFormatError, match="cannot open"):
        open_gguf(tmp_path / "missing.gguf")


def _mapping_rss_kb(address: int) -> int:
    """Resident KiB of the mapping holding ``address`` (``/proc/self/smaps``)."""
    inside = False
    with open("/proc/self/smaps", encoding="utf-8") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
                start, _, end = head.partition("-")
                inside = int(start, 16) <= address < int(end, 16)
            elif inside and line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux's /proc/self/smaps")
def test_release_pages_drops_the_read_pages_and_reads_still_work(default_source: ModelSource) -> None:
    path = Path(default_source.path).resolve()
    f = GGUFFile(path)  # not the cached one: this test owns the mapping
    name = max(f.tensors, key=lambda n: f.tensors[n].nbytes)
    before = f.raw(name).copy()
    read = int(sum(int(f.raw(n).sum(dtype=np.uint64)) for n in f.tensors))  # every page once
    address = f.raw(name).ctypes.data
    assert _mapping_rss_kb(address) > 0.9 * path.stat().st_size / 1024
    f.release_pages()
    assert _mapping_rss_kb(address) < 1024
    np.testing.assert_array_equal(f.raw(name), before)  # the data is read again, unchanged
    assert read == int(sum(int(f.raw(n).sum(dtype=np.uint64)) for n in f.tensors))
