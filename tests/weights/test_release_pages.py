"""Loading gives a GGUF file's pages back as it converts them (GGUFFile.release), so a load's
peak memory is the converted weights plus about one tensor of the file, not the whole file
beside them. Checked in the kernel's own account of the mapping (/proc/self/smaps)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llamita.kernels import native
from llamita.kernels.int4 import VNNI_LAYOUTS
from llamita.library.catalog import default_model_path
from llamita.weights import gguf as gguf_module
from llamita.weights.gguf import gguf_state_dict
from llamita.weights.gguf_reader import GGUFFile
from llamita.weights.quants import BLOCK_SIZES, GGMLType, quantize

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")


def mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (every map of it, summed)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) >= 6 and Path(fields[5]) == path
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_release_drops_pages_and_keeps_views_valid():
    path = default_model_path().resolve()
    with GGUFFile(path) as gguf:
        header = mapped_rss(path)  # the metadata, read at open
        names = sorted(gguf.tensors, key=lambda n: -gguf.tensors[n].nbytes)[:3]
        before = {n: gguf.tensor_bytes(n).copy() for n in names}  # touches every page of them
        touched = sum(gguf.tensors[n].nbytes for n in names)
        assert mapped_rss(path) - header >= 0.9 * touched
        view = gguf.tensor_bytes(names[0])
        for n in names:
            gguf.release(n)
        assert mapped_rss(path) - header < 0.01 * touched
        # The pages come back from the file on the next read: views stay what they were.
        assert np.array_equal(view, before[names[0]])
        for n in names:
            assert np.array_equal(gguf.tensor_bytes(n), before[n])


def test_release_of_a_byte_range_is_only_that_range():
    path = default_model_path().resolve()
    with GGUFFile(path) as gguf:
        name = max(gguf.tensors, key=lambda n: gguf.tensors[n].nbytes)
        size = gguf.tensors[name].nbytes
        int(gguf.tensor_bytes(name).sum())
        full = mapped_rss(path)
        gguf.release(name, 0, size // 2)
        half = mapped_rss(path)
        assert 0.4 * size < full - half < 0.6 * size


def test_converting_a_file_leaves_none_of_it_resident():
    path = default_model_path().resolve()
    with GGUFFile(path) as gguf:
        from llamita.weights.gguf import config_from_gguf

        state = gguf_state_dict(gguf, config_from_gguf(gguf), compact=True)
        assert state
        # Left: the metadata read at open, float tensors (norms: dense weights may be views of
        # the map) and the part pages at each tensor's two ends.
        floats = sum(i.nbytes for i in gguf.tensors.values() if i.ggml_type in (0, 1, 30))
        allowed = gguf.data_offset + floats + 2 * 4096 * len(gguf.tensors)
        assert mapped_rss(path) < allowed < 0.1 * gguf.file_size


@pytest.mark.skipif(not native.vnni_kernels(), reason=f"llamita's kernels: {native.kernel_summary()}")
@pytest.mark.parametrize("ggml_type", [GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K, GGMLType.Q6_K])
def test_packing_by_row_slices_is_bit_equal_to_packing_whole(monkeypatch, ggml_type):
    n, k = 80, 512
    block, block_bytes = BLOCK_SIZES[ggml_type]
    row_bytes = k // block * block_bytes
    weights = torch.randn(n, k, generator=torch.Generator().manual_seed(int(ggml_type)))
    raw = quantize(weights, ggml_type).reshape(-1)
    whole = gguf_module._pack(raw, ggml_type, n, k)
    monkeypatch.setattr(gguf_module, "PACK_SLICE_BYTES", 16 * row_bytes)  # 5 slices of 16 rows
    released: list[tuple[int, int]] = []
    sliced = gguf_module._pack_by_rows(raw, ggml_type, (n, k), lambda a, b: released.append((a, b)))
    assert sliced.layout == whole.layout in VNNI_LAYOUTS
    assert (sliced.out_features, sliced.in_features) == (whole.out_features, whole.in_features) == (n, k)
    assert torch.equal(sliced.packed, whole.packed)
    assert torch.equal(sliced.scales_and_zeros.view(torch.uint8), whole.scales_and_zeros.view(torch.uint8))
    assert released == [(r * row_bytes, (r + 16) * row_bytes) for r in range(0, n, 16)]
    # A weight under four slices is packed whole, giving nothing back on the way.
    monkeypatch.setattr(gguf_module, "PACK_SLICE_BYTES", 32 * row_bytes)
    released.clear()
    assert torch.equal(
        gguf_module._pack_by_rows(raw, ggml_type, (n, k), lambda a, b: released.append((a, b))).packed, whole.packed
    )
    assert released == []
