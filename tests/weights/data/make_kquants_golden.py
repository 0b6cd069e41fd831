"""Write kquants_llamacpp.npz: llama.cpp's K-quant bytes for test_kquants.golden_inputs().

usage: python tests/weights/data/make_kquants_golden.py /path/to/libggml-base.so

Calls `quantize_row_q{2..6}_K_ref` in a llama.cpp build's libggml-base through ctypes (see
README.md for the build used). Not run by the test suite.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from test_kquants import _inputs_sha256, golden_inputs  # noqa: E402

BYTES = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def main(lib_path: str) -> None:
    lib = ctypes.CDLL(lib_path)
    x = np.ascontiguousarray(golden_inputs(), dtype=np.float32)
    out: dict[str, np.ndarray] = {"inputs_sha256": np.array(_inputs_sha256(x))}
    for name, nbytes in BYTES.items():
        fn = getattr(lib, f"quantize_row_{name[:2].lower()}_K_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        y = np.zeros((x.size // 256, nbytes), dtype=np.uint8)
        fn(x.ctypes.data, y.ctypes.data, x.size)
        out[name] = y
    np.savez_compressed(HERE / "kquants_llamacpp.npz", **out)


if __name__ == "__main__":
    main(sys.argv[1])
