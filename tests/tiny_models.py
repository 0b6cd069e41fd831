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

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


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
    cfg = dict(
        vocab_size=len(byte_vocab()[0]),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    cfg.update(over)
    return cfg


def random_hf_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in HF naming (with the `model.` prefix), float32."""
    g = torch.Generator().manual_seed(seed)
    d, f, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nh, nkv, v = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    sd = {
        "model.embed_tokens.weight": torch.randn(v, d, generator=g),
        "model.norm.weight": 1 + 0.1 * torch.randn(d, generator=g),
    }
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = w(v, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd.update(
            {
                p + "input_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                p + "post_attention_layernorm.weight": 1 + 0.1 * torch.randn(d, generator=g),
                p + "self_attn.q_proj.weight": w(nh * hd, d),
                p + "self_attn.k_proj.weight": w(nkv * hd, d),
                p + "self_attn.v_proj.weight": w(nkv * hd, d),
                p + "self_attn.o_proj.weight": w(d, nh * hd),
                p + "mlp.gate_proj.weight": w(f, d),
                p + "mlp.up_proj.weight": w(f, d),
                p + "mlp.down_proj.weight": w(d, f),
            }
        )
    return sd


def _permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF rotate-half rows -> GGUF interleaved rows (llama.cpp's LlamaModel.permute)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_divisors(cfg: dict) -> np.ndarray:
    """What llama.cpp's converter writes as `rope_freqs.weight` (docs/llama-reference.md §2.5)."""
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
                s["high_freq_factor"] - s["low_freq_factor"]
            )
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(
    path: Path,
    cfg: dict,
    sd: dict[str, torch.Tensor],
    qtype: gguf.GGMLQuantizationType = gguf.GGMLQuantizationType.F32,
    context_length: int | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """Write `sd` (HF naming) as a llama GGUF file the way convert_hf_to_gguf.py would.

    split_max_tensors > 0: split it as llama.cpp's gguf-split does, into
    `STEM-0000K-of-0000N.gguf` parts of at most that many tensors (the first part returned)."""
    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
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

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, t in sd.items():
        arr = t.float().numpy()
        if name in names:
            gname = names[name]
        else:
            i, rest = name[len("model.layers.") :].split(".", 1)
            gname = f"blk.{i}.{layer[rest[: -len('.weight')]]}.weight"
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
    if split_max_tensors:
        parts = sorted(path.parent.glob(f"{path.stem}-00001-of-*.gguf"))
        assert len(parts) == 1, parts
        return parts[0]
    return path


# ---------------------------------------------------------------- Llama 3.1 / 3.2 in miniature
# Real shape ratios (GQA 4:1, head_dim 32, FFN from Meta's rule, rope_theta 5e5, llama3 scaling
# with the real original context 8192) at dim 256, and a Llama-3-style vocabulary in miniature:
# 256 byte ranks + 5 merges, then Llama 3.1's 256 special tokens (517 tokens).

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MINI_MERGES = [(b" ", b"t"), (b"h", b"e"), (b" t", b"he"), (b"i", b"n"), (b" ", b"a")]


def llama3_special_tokens() -> list[str]:
    return [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]


def mini_ranks() -> list[bytes]:
    """BPE tokens in rank order: every byte, then the merged tokens."""
    return [bytes([b]) for b in range(256)] + [a + b for a, b in MINI_MERGES]


MINI_VOCAB = len(mini_ranks()) + 256  # 517


def llama31_mini_config(tied: bool = False, factor: float | None = None) -> dict:
    """HF config of a 2-layer Llama 3.1 (untied, factor 8) or 3.2 (tied, factor 32) miniature."""
    return dict(
        vocab_size=MINI_VOCAB,
        hidden_size=256,
        intermediate_size=1024 if tied else 896,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=tied,
        bos_token_id=MINI_VOCAB - 256,
        eos_token_id=[MINI_VOCAB - 255, MINI_VOCAB - 248, MINI_VOCAB - 247],
        rope_scaling={
            "rope_type": "llama3",
            "factor": factor or (32.0 if tied else 8.0),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def meta_params(cfg: dict) -> dict:
    """Meta's params.json for an HF config from llama31_mini_config (FFN size derived)."""
    tied = cfg["tie_word_embeddings"]
    return {
        "dim": cfg["hidden_size"],
        "n_layers": cfg["num_hidden_layers"],
        "n_heads": cfg["num_attention_heads"],
        "n_kv_heads": cfg["num_key_value_heads"],
        "vocab_size": cfg["vocab_size"],
        "ffn_dim_multiplier": 1.5 if tied else 1.3,
        "multiple_of": 256 if tied else 128,
        "norm_eps": cfg["rms_norm_eps"],
        "rope_theta": cfg["rope_theta"],
        "use_scaled_rope": True,
    }


def hf_llama(cfg: dict, sd: dict[str, torch.Tensor]):
    """transformers' LlamaForCausalLM holding `sd` (HF names), float32, eval mode."""
    import transformers

    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_scaling") or {"rope_type": "default"}, rope_theta=cfg.pop("rope_theta"))
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, rope_parameters=rope))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    return model.float().eval()


def _byte_spelling(b: bytes) -> str:
    tokens = byte_vocab()[0]
    return "".join(tokens[3 + x] for x in b)


def write_mini_tokenizer_json(folder: Path, chat_template: str | None = None) -> None:
    """tokenizer.json + tokenizer_config.json shaped like Llama 3.1's, for the mini vocabulary."""
    import json

    ranks = mini_ranks()
    specials = llama3_special_tokens()
    bos = specials[0]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": len(ranks) + i,
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, t in enumerate(specials)
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "Sequence",
            "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                {
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": bos, "type_id": 1}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {bos: {"id": bos, "ids": [len(ranks)], "tokens": [bos]}},
                },
            ],
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": {_byte_spelling(t): i for i, t in enumerate(ranks)},
            "merges": [f"{_byte_spelling(a)} {_byte_spelling(b)}" for a, b in MINI_MERGES],
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    tok_cfg = {
        "bos_token": bos,
        "eos_token": "<|eot_id|>",
        "pad_token": "<|finetune_right_pad_id|>",
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if chat_template is not None:
        tok_cfg["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))


def write_mini_tiktoken(folder: Path) -> None:
    """Meta's tokenizer.model (base64 token, rank) for the mini vocabulary."""
    import base64

    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(mini_ranks())]
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")


def write_hf_folder(
    folder: Path,
    cfg: dict,
    model,
    *,
    max_shard_size: str | None = None,
    classic_config: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """save_pretrained (safetensors) + tokenizer + generation_config.json, as on the Hub.

    classic_config: rewrite config.json in the transformers 4 form real Llama 3.1 downloads
    have (`rope_theta` + `rope_scaling`) instead of transformers 5's `rope_parameters`.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        import copy

        model = copy.deepcopy(model).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    if classic_config:
        path = folder / "config.json"
        c = json.loads(path.read_text())
        rope = dict(c.pop("rope_parameters"))
        c["rope_theta"] = rope.pop("rope_theta")
        c["rope_scaling"] = rope
        path.write_text(json.dumps(c, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": cfg["bos_token_id"],
                "eos_token_id": cfg["eos_token_id"],
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.9,
            }
        )
    )
    write_mini_tokenizer_json(folder)
    return folder


_META_SPLIT = {
    "attention.wq": 0,
    "attention.wk": 0,
    "attention.wv": 0,
    "attention.wo": 1,
    "feed_forward.w1": 0,
    "feed_forward.w2": 1,
    "feed_forward.w3": 0,
}
_META_OF_HF = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def write_meta_folder(
    folder: Path,
    cfg: dict,
    sd: dict[str, torch.Tensor],
    *,
    n_shards: int = 1,
    embedding_split: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """params.json + consolidated.NN.pth + tokenizer.model, the way Meta ships Llama 3: Q/K rows
    interleaved, model-parallel shards split per docs/llama-reference.md §7.2 (embedding on `embedding_split`,
    0 for Llama 3, 1 for Llama 2), norms replicated. A tied model still carries `output.weight`
    (a copy of the embedding), as Meta's Transformer saves it."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    full: dict[str, tuple[torch.Tensor, int | None]] = {
        "tok_embeddings.weight": (sd["model.embed_tokens.weight"], embedding_split),
        "norm.weight": (sd["model.norm.weight"], None),
        "output.weight": (sd.get("lm_head.weight", sd["model.embed_tokens.weight"]), 0),
    }
    for name, t in sd.items():
        if not name.startswith("model.layers."):
            continue
        i, rest = name[len("model.layers.") :].split(".", 1)
        meta = _META_OF_HF[rest.removesuffix(".weight")]
        if meta == "attention.wq":
            t = torch.from_numpy(_permute(t.numpy(), cfg["num_attention_heads"]))
        elif meta == "attention.wk":
            t = torch.from_numpy(_permute(t.numpy(), cfg["num_key_value_heads"]))
        full[f"layers.{i}.{meta}.weight"] = (t, _META_SPLIT.get(meta))
    for s in range(n_shards):
        shard = {}
        for name, (t, split) in full.items():
            part = t if split is None else t.chunk(n_shards, dim=split)[s]
            shard[name] = part.to(dtype).contiguous().clone()
        torch.save(shard, folder / f"consolidated.{s:02d}.pth")
    (folder / "params.json").write_text(json.dumps(meta_params(cfg)))
    write_mini_tiktoken(folder)
    return folder
