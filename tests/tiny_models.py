"""Small random Llama models written as real GGUF files, for tests that need exact control.

The weights are generated in the Hugging Face layout (so transformers' LlamaForCausalLM can run
the same model) and written the way llama.cpp's converter does: Q/K rows permuted to the
interleaved order, optional `rope_freqs` divisors for llama3 scaling, an optional quantization.
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
          " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_vocab() -> tuple[list[str], list[int], list[str]]:
    """A GPT-2 style byte-level vocab: 3 specials, 256 byte tokens, a handful of merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for _, c in sorted(zip(bs, cs))]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + byte_chars
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a"]
    tokens += ["Ġt", "he", "Ġthe", "in", "Ġa"]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    return tokens, types, merges


def tiny_hf_config(**over: object) -> dict:
    """Llama 3.1's shape in miniature: GQA 4:1, untied head, llama3 RoPE scaling whose smooth
    band (head_dim 16, theta 1e4, original context 64) covers two of the eight frequencies."""
    cfg = dict(vocab_size=len(byte_vocab()[0]), hidden_size=64, intermediate_size=96,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
               rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256,
               tie_word_embeddings=False,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    cfg.update(over)
    return cfg


def random_hf_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in HF naming (with the `model.` prefix), float32."""
    g = torch.Generator().manual_seed(seed)
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nh, nkv, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    sd = {"model.embed_tokens.weight": torch.randn(v, d, generator=g),
          "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
            p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
            p + "self_attn.q_proj.weight": w(nh * hd, d),
            p + "self_attn.k_proj.weight": w(nkv * hd, d),
            p + "self_attn.v_proj.weight": w(nkv * hd, d),
            p + "self_attn.o_proj.weight": w(d, nh * hd),
            p + "mlp.gate_proj.weight": w(f, d),
            p + "mlp.up_proj.weight": w(f, d),
            p + "mlp.down_proj.weight": w(d, f),
        })
    return sd


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows -> GGUF interleaved rows (llama.cpp's LlamaModel.permute)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(cfg: dict) -> np.ndarray:
    """What llama.cpp's converter writes as `rope_freqs.weight` (LLAMA_SPEC §2.5)."""
    s, hd = cfg["rope_scaling"], cfg["head_dim"]
    base = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
    out = []
    for freq in base:
        wl = 2 * math.pi / freq
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wl - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(path: Path, cfg: dict, sd: dict[str, torch.Tensor],
               qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
               context_length: int | None = None) -> Path:
    """Write `sd` (HF naming) as a llama GGUF file the way convert_hf_to_gguf.py would."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(context_length or cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(1 if qtype == gguf.GGMLQuantizationType.F16 else 0)
    tokens, types, merges = byte_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, t in sd.items():
        arr = t.float().numpy()
        if name in names:
            gname = names[name]
        else:
            i, rest = name[len("model.layers."):].split(".", 1)
            gname = f"blk.{i}.{layer[rest[:-len('.weight')]]}.weight"
        if name.endswith("q_proj.weight"):
            arr = _permute(arr, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            arr = _permute(arr, cfg["num_key_value_heads"])
        if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(arr, qtype)
            w.add_tensor(gname, data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
    if cfg.get("rope_scaling"):
        w.add_tensor("rope_freqs.weight", llama3_rope_divisors(cfg))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
