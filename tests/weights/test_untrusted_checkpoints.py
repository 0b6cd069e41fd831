"""Checkpoint folders from strangers: a `.pth` that carries code is refused without running it,
and a damaged safetensors header ends in a typed error.

A PyTorch checkpoint is a pickle; unpickling runs whatever `__reduce__` asks for. Meta folders
are read with `torch.load(weights_only=True)`, which only rebuilds tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamita.engine.loader import load_model
from llamita.errors import LlamitaError, ModelFileError
from llamita.weights.checkpoint import read_checkpoint

from tiny_models import hf_llama, llama31_mini_config, random_hf_weights, write_hf_folder, write_meta_folder


class _RunsShell:
    """What a malicious checkpoint pickles: unpickling it calls os.system(command)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204 (pickle protocol)
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("untrusted")
    cfg = llama31_mini_config()
    sd = random_hf_weights(cfg, seed=3)
    return {
        "meta": write_meta_folder(root / "meta", cfg, sd),
        "hf": write_hf_folder(root / "hf", cfg, hf_llama(cfg, sd)),
    }


def _evil_meta(folders: dict[str, Path], tmp_path: Path, how: str) -> tuple[Path, Path]:
    meta = shutil.copytree(folders["meta"], tmp_path / "meta")
    marker = tmp_path / "pwned"
    shard = meta / "consolidated.00.pth"
    state = torch.load(shard, weights_only=True)
    payload = _RunsShell(f"touch {marker}")
    if how == "torch.save":  # the zip format torch writes, one entry a code-running object
        state["layers.0.attention.wq.weight"] = payload
        torch.save(state, shard)
    else:  # the legacy format: a bare pickle stream
        with open(shard, "wb") as f:
            pickle.dump({"tok_embeddings.weight": payload}, f)
    return meta, marker


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pth_that_runs_code_is_refused(folders, tmp_path, how):
    meta, marker = _evil_meta(folders, tmp_path, how)
    with pytest.raises(ModelFileError, match="consolidated.00.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(meta)  # the mini folder's tokenizer.model is not one load_model takes
    assert not marker.exists()


def test_the_payload_is_live(folders, tmp_path):
    """Without weights_only the same file does run its command: the refusal above is real."""
    meta, marker = _evil_meta(folders, tmp_path, "torch.save")
    code = f"import torch; torch.load({str(meta / 'consolidated.00.pth')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, timeout=120)
    assert marker.exists()


def _safetensors(header: bytes, declared: int | None = None, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header) if declared is None else declared) + header + data


def _header(**tensors: dict) -> bytes:
    return json.dumps(tensors).encode()


@pytest.mark.parametrize(
    "content",
    [
        _safetensors(b"{}", declared=1 << 40),  # header length past the end of the file
        _safetensors(b"{}", declared=2**64 - 1),
        _safetensors(b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'),  # bad JSON
        _safetensors(b"\xff\xfe{}"),  # not UTF-8
        _safetensors(
            _header(**{"model.norm.weight": {"dtype": "F32", "shape": [256], "data_offsets": [0, 1 << 40]}})
        ),  # data missing
        _safetensors(
            _header(**{"model.norm.weight": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 16]}}),
            data=b"\0" * 16,
        ),
        _safetensors(
            _header(**{"model.norm.weight": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}), data=b"\0" * 16
        ),
        b"\x01\x02",  # shorter than the length field
    ],
    ids=[
        "len-past-file",
        "len-max",
        "bad-json",
        "not-utf8",
        "offsets-past-file",
        "shape-vs-offsets",
        "unknown-dtype",
        "tiny",
    ],
)
def test_damaged_safetensors_header_is_a_typed_error(folders, tmp_path, content):
    hf = shutil.copytree(folders["hf"], tmp_path / "hf")
    (hf / "model.safetensors").write_bytes(content)
    with pytest.raises(LlamitaError, match="model.safetensors"):
        load_model(hf, dtype="float32", device="cpu")
