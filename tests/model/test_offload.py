"""GPU/CPU layer offload (`--gpu-layers N`): the first N blocks on the GPU, the rest on the CPU,
against the whole model on the CPU. The CUDA checks skip on machines without a GPU."""

from __future__ import annotations

import pytest
import torch

from llamita.api.llm import LLM
from llamita.engine.llm_engine import LLMEngine
from llamita.engine.loader import load_model
from llamita.errors import InvalidParameterError
from llamita.glass.attention import attention_weights
from llamita.glass.lens import logit_lens
from llamita.model.offload import OnDevice, layer_devices, offload_layers
from llamita.sampling_params import SamplingParams

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
PROMPT = [1, 504, 3458, 314, 260, 3575, 282, 4649, 47]  # fixed token ids
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def _greedy(loaded) -> list[int]:
    return LLM.from_loaded(loaded).generate(prompt_token_ids=PROMPT, params=GREEDY).token_ids


def _engine_greedy(loaded) -> list[int]:
    engine = LLMEngine(loaded, kv_cache_tokens=256, block_size=16)
    engine.add_request("a", PROMPT, GREEDY)
    out: list[int] = []
    while engine.has_unfinished():
        for step in engine.step():
            out += step.token_ids
    return out


def test_layer_devices_puts_the_first_n_on_the_gpu():
    gpu = torch.device("cuda", 1)
    assert layer_devices(4, 2, gpu) == [gpu, gpu, torch.device("cpu"), torch.device("cpu")]
    assert layer_devices(3, 0, gpu) == [torch.device("cpu")] * 3
    with pytest.raises(ValueError):
        layer_devices(3, 4, gpu)


def test_gpu_layers_needs_cuda(default_model_path):
    with pytest.raises(InvalidParameterError, match="--device cuda"):
        load_model(default_model_path, device="cpu", gpu_layers=3)


def test_wrapped_blocks_compute_the_same(llm_f32):
    """The wrapper on the CPU alone (no device change): the blocks' arguments pass through."""
    loaded = load_model(llm_f32.loaded.path, dtype="float32", device="cpu")
    offload_layers(loaded.model, 10, torch.device("cpu"))
    assert all(isinstance(b, OnDevice) for b in loaded.model.layers)
    assert _greedy(loaded) == _greedy(llm_f32.loaded)
    _same_glass(loaded, llm_f32.loaded)


def _same_glass(off, ref) -> None:
    """The glass box reaches into the blocks (attention maps, the logit lens): through the
    wrappers it sees what it sees in the whole model."""
    got, want = attention_weights(off.model, PROMPT), attention_weights(ref.model, PROMPT)
    assert got.shape == want.shape and abs(got - want).max() < 1e-4
    lens = [logit_lens(LLM.from_loaded(x), "The capital of France is", raw=True, top=3)["layers"] for x in (off, ref)]
    assert [[t["id"] for t in s["top"]] for s in lens[0]] == [[t["id"] for t in s["top"]] for s in lens[1]]


@needs_cuda
def test_half_the_layers_on_the_gpu_equal_the_cpu(llm_f32, default_model_path):
    ref = llm_f32.loaded
    n = ref.config.n_layers // 2
    off = load_model(default_model_path, dtype="float32", device="cuda", gpu_layers=n)
    layers = off.model.layers
    assert all(next(b.parameters()).device.type == "cuda" for b in layers[:n])
    assert all(next(b.parameters()).device.type == "cpu" for b in layers[n:])
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        want, got = ref.model(ids), off.model(ids)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4
    assert _greedy(off) == _greedy(ref)
    assert _engine_greedy(off) == _engine_greedy(ref)
    _same_glass(off, ref)


@needs_cuda
def test_cuda_bfloat16_agrees_with_the_cpu(llm_f32, default_model_path):
    """bf16 on the GPU (dequantized weights, SDPA) against float32 on the CPU: the first
    tokens agree and the logits are close."""
    cuda = load_model(default_model_path, dtype="auto", device="cuda")
    assert cuda.dtype == torch.bfloat16 and cuda.model.device.type == "cuda"
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        want = llm_f32.loaded.model(ids)[0, -1]
        got = cuda.model(ids.cuda())[0, -1].cpu()
    assert float((got - want).abs().max() / want.abs().max()) < 5e-2
    assert _greedy(cuda)[:4] == _greedy(llm_f32.loaded)[:4]
