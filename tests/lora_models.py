"""Random LoRA adapters made by `peft` on the transformers twin of a tiny model, saved in PEFT
format, and the same adapter written as llama.cpp's GGUF LoRA (the way convert_lora_to_gguf.py
lays it out): the independent references the LoRA tests compare llamita against."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from tiny_models import _permute, hf_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_peft_adapter(
    folder: Path,
    cfg: dict,
    sd: dict[str, torch.Tensor],
    *,
    seed: int = 0,
    r: int = 4,
    alpha: float = 8.0,
    targets: list[str] | None = None,
    **lora_kwargs: object,
) -> Path:
    """peft.get_peft_model on the transformers model, A and B filled with random values (PEFT
    starts B at zero, which would test nothing), save_pretrained to `folder`."""
    import peft

    model = hf_llama(cfg, sd)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or TARGETS, lora_dropout=0.0, **lora_kwargs)
    pm = peft.get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    pm.save_pretrained(folder)
    return folder


def peft_model(cfg: dict, sd: dict[str, torch.Tensor], folder: Path, scale: float = 1.0):
    """transformers + the saved adapter, loaded back by peft (float32, eval), its updates
    multiplied by `scale` the way peft scales an adapter (scale_layer)."""
    import peft

    model = peft.PeftModel.from_pretrained(hf_llama(cfg, sd), folder).eval()
    if scale != 1.0:
        for m in model.modules():
            if hasattr(m, "scale_layer"):
                m.scale_layer(scale)
    return model


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """A llamita model's (dense) weights under transformers' names."""
    return {(k if k == "lm_head.weight" else "model." + k): v for k, v in model.state_dict().items()}


def write_gguf_lora(
    path: Path, cfg: dict, folder: Path, qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32
) -> Path:
    """The PEFT adapter in `folder` as a GGUF LoRA file: general.type=adapter,
    adapter.type=lora, adapter.lora.alpha; `blk.N.<name>.weight.lora_a` (r, in) and `.lora_b`
    (out, r), with lora_b's rows of q/k permuted to GGUF's interleaved RoPE order as the
    converter's LlamaModel.permute does to the product B A."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key in sorted(tensors):
        if ".lora_A." not in key:
            continue
        module = key.removeprefix("base_model.model.model.").removesuffix(".lora_A.weight")
        i, rest = module.removeprefix("layers.").split(".", 1)
        a = tensors[key].float().numpy()
        b = tensors[key.replace(".lora_A.", ".lora_B.")].float().numpy()
        if rest == "self_attn.q_proj":
            b = _permute(b, cfg["num_attention_heads"])
        elif rest == "self_attn.k_proj":
            b = _permute(b, cfg["num_key_value_heads"])
        base = f"blk.{i}.{names[rest]}.weight"
        for suffix, arr in (("lora_a", a), ("lora_b", b)):
            arr = np.ascontiguousarray(arr)
            if qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(f"{base}.{suffix}", arr)
            else:
                data = gguf.quants.quantize(arr, qtype)
                w.add_tensor(f"{base}.{suffix}", data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())
