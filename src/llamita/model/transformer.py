"""The Llama transformer (docs/llama-reference.md §2): RMSNorm, RoPE, grouped-query attention, SwiGLU.

Parameter names are the canonical ones every weight reader produces (Hugging Face names without
the `model.` prefix), so `load_state_dict` takes a reader's output directly. The KV cache and the
positions come in as arguments; the model holds no generation state. Each forward pass turns
them into one `AttentionInputs` (model/attention_inputs.py) that every block's attention reads.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from llamita.config import ModelConfig
from llamita.kernels.compact import StateDict
from llamita.kernels.encoded_rows import EncodedRows
from llamita.kernels.int4 import Int4Weight
from llamita.kernels.int8 import Int8Weight
from llamita.model.attention_inputs import AttentionInputs
from llamita.model.attention_maps import attention_maps
from llamita.model.embedding import EncodedEmbedding, Int8Embedding
from llamita.model.kv_cache import KVCache
from llamita.model.linear import FusedLinear, Int4Linear, Int8Linear, fuse_linears
from llamita.model.lora_linear import LoraSlots
from llamita.model.paged_kv_cache import PagedKVCache
from llamita.model.rope import apply_rope, rope_inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32, cast back, then scale: the order Meta and HF both use.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # Typed as modules: compact, LoRA and tensor-parallel layers replace the nn.Linear.
        self.q_proj: nn.Module = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj: nn.Module = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj: nn.Module = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj: nn.Module = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        # q/k/v joined into one kernel call (Transformer.fuse_projections); outside the module
        # tree, as the parts keep the weights.
        self.fused_qkv: FusedLinear | None = None

    def project_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries (B, S, n_heads, hd) and keys, values (B, S, n_kv_heads, hd), RoPE applied to
        q and k: what attention scores are computed from (model/attention_maps.py reads them too)."""
        bsz, seqlen, _ = x.shape
        n_q, hd = self.n_heads, self.head_dim
        fused = self.fused_qkv
        if fused is not None and fused.serves(self.q_proj, self.k_proj, self.v_proj):
            # One kernel call's rows (B, S, (n_heads + 2 n_kv_heads) hd), q, k, v in turn: the
            # query and key heads side by side take RoPE together (half the elementwise calls).
            joined = fused.inner(x)
            heads = joined.view(bsz, seqlen, -1, hd)
            qk = apply_rope(heads[:, :, : n_q + self.n_kv_heads], cos, sin)
            return qk[:, :, :n_q], qk[:, :, n_q:], heads[:, :, n_q + self.n_kv_heads :]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(bsz, seqlen, n_q, hd)
        k = k.view(bsz, seqlen, self.n_kv_heads, hd)
        v = v.view(bsz, seqlen, self.n_kv_heads, hd)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, step: AttentionInputs) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        q, k, v = self.project_qkv(x, step.cos, step.sin)
        # A decode step over the paged cache attends in place where it can (PagedKVCache.attend).
        paged = step.cache if seqlen == 1 and isinstance(step.cache, PagedKVCache) else None
        out = None if paged is None else paged.attend(self.layer, step.positions, q, k, v, step.length)
        if out is None:
            out = self.attend(q, k, v, step)
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(bsz, seqlen, -1))
        return projected

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: AttentionInputs) -> torch.Tensor:
        """q (B, S, n_heads, hd) attending to the cache (written with k, v first) or to the S
        tokens themselves: (B, n_heads, S, hd)."""
        seqlen = q.shape[1]
        mask = step.mask
        if step.cache is not None:
            keys, values = step.cache.update(self.layer, step.rows, step.positions, k, v, step.length)
        else:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)  # (B, n_kv, S, hd)
        if seqlen == 1 and q.device.type == "cpu":  # a decode step: see single_query_attention
            out = single_query_attention(q.transpose(1, 2), keys, values, mask)
        elif mask is None and seqlen >= CAUSAL_BLOCK and q.device.type == "cpu" and q.dtype == torch.float32:
            out = causal_attention(q, keys, values)  # a prompt's first chunk: see causal_attention
        else:  # mask None means plain causal attention over exactly these S tokens.
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2),
                keys,
                values,
                attn_mask=mask,
                is_causal=mask is None and seqlen > 1,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )  # (B, n_heads, S, hd)
        return out


def single_query_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q kᵀ / √hd) v for one query per batch row, in float32: a decode step's attention.

    q (B, n_heads, 1, hd); keys, values (B, n_kv_heads, L, hd); mask (B, 1, 1, L), True =
    attend, or None (every key). Returns (B, n_heads, 1, hd) in q's dtype.

    torch's CPU flash-attention kernel, built for many queries, took 1.8-7x as long as these
    three small matmul/softmax ops for one query (2 threads, 9 heads / 3 KV heads, bfloat16):
    69 vs 38 us at 1 row x 128 keys, 508 vs 100 at 1 x 1024, 446 vs 86 at 8 x 128 (a third of
    the 8-sequence decode step; 8 sequences 354 -> 490 tokens/s). Scores and softmax are
    float32, as in that kernel; a query's heads sharing a KV head form one matrix (grouped-query
    attention without expanding keys).
    """
    bsz, n_heads, _, hd = q.shape
    n_kv, length = keys.shape[1], keys.shape[2]
    qg = q.reshape(bsz, n_kv, n_heads // n_kv, hd).float() * hd**-0.5
    # Keys and values made contiguous before widening: the paged cache hands out transposed
    # views, and a batched matmul over strided float32 operands took 3x as long as a
    # contiguous one (8 rows x 128 keys: 105 vs 34 us, more than the two copies).
    scores = torch.matmul(qg, keys.contiguous().float().transpose(-1, -2))  # (B, n_kv, group, L)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(bsz, 1, 1, length), float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), values.contiguous().float())  # (B, n_kv, group, hd)
    return out.reshape(bsz, n_heads, 1, hd).to(q.dtype)


# Query rows per block of `causal_attention`. 64 rather than 128: a block's scores (its
# queries' heads times the keys it sees) stay in a core's L2, and a tenth fewer of them are
# computed past the diagonal; pp512 of the default model held to AVX2, 2 threads: 1078 -> 1140
# tokens/s (benchmarks/ab_bench.py, 5 rounds; 32 was no faster). docs/performance.md.
CAUSAL_BLOCK = 64


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √hd + causal mask) v for S queries over their own S keys, float32: the
    attention of a prompt's first chunk (prefill), on the CPU.

    q (B, S, n_heads, hd); keys, values (B, n_kv_heads, S, hd), any strides (the paged cache
    hands out transposed views). Returns (B, n_heads, S, hd), as SDPA would.

    In blocks of CAUSAL_BLOCK queries, each a matmul over only the keys up to its last query
    (so about half of the S x S scores are computed, as causality allows), a softmax and a
    matmul with the values; a query's heads that share a KV head are one matrix (grouped-query
    attention without expanding keys). torch's CPU flash-attention kernel took 6.6-7.0 ms a layer
    of the default model at 512 tokens, 1 thread, float32 held to AVX2, with or without
    `is_causal`, and these matmuls (MKL) 4.3-5.3 in blocks of 128 (docs/performance.md, "The
    first chunk's attention"); bfloat16 stays on SDPA, which accumulates in float32.
    """
    bsz, seqlen, n_heads, hd = q.shape
    n_kv = keys.shape[1]
    group = n_heads // n_kv
    # (B, n_kv, S, group, hd): a block's queries are rows (position, head) of one matrix.
    qg = (q * hd**-0.5).reshape(bsz, seqlen, n_kv, group, hd).transpose(1, 2)
    keys_t = keys.transpose(-1, -2)  # (B, n_kv, hd, S)
    out = torch.empty(bsz, seqlen, n_kv, group, hd, dtype=q.dtype, device=q.device)
    future = torch.full((CAUSAL_BLOCK, CAUSAL_BLOCK), float("-inf"), device=q.device).triu(1)[:, None]
    for start in range(0, seqlen, CAUSAL_BLOCK):
        end = min(seqlen, start + CAUSAL_BLOCK)
        n = end - start
        block = qg[:, :, start:end].reshape(bsz, n_kv, n * group, hd)
        scores = torch.matmul(block, keys_t[..., :end])  # (B, n_kv, n * group, end)
        # Query start + i sees keys up to start + i: the block's own keys form the triangle.
        scores.view(bsz, n_kv, n, group, end)[..., start:].add_(future[:n, :, :n])
        probs = torch.softmax(scores, dim=-1)
        out[:, start:end] = torch.matmul(probs, values[:, :, :end]).view(bsz, n_kv, n, group, hd).transpose(1, 2)
    return out.view(bsz, seqlen, n_heads, hd).transpose(1, 2)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj: nn.Module = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # as Attention's
        self.up_proj: nn.Module = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj: nn.Module = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.fused_gate_up: FusedLinear | None = None  # as Attention.fused_qkv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused_gate_up
        if fused is not None and fused.serves(self.gate_proj, self.up_proj):
            gate, up = fused(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        out: torch.Tensor = self.down_proj(F.silu(gate).mul_(up))  # in place: no third tensor
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)  # the pre-FFN norm
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, step: AttentionInputs) -> torch.Tensor:
        h: torch.Tensor = x + self.self_attn(self.input_layernorm(x), step)
        out: torch.Tensor = h + self.mlp(self.post_attention_layernorm(h))
        return out


def _attach_compact(model: nn.Module, name: str, weight: object) -> None:
    """Replace the linear layer `name` ("layers.3.mlp.up_proj.weight") with the compact module
    over `weight` (Int4Weight or Int8Weight)."""
    parent, _, child = name.removesuffix(".weight").rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    head = name == "lm_head.weight"  # expands from fewer rows (model/linear.py)
    if isinstance(weight, Int4Weight):
        setattr(owner, child, Int4Linear(weight, head))
    elif isinstance(weight, Int8Weight):
        setattr(owner, child, Int8Linear(weight, head))
    else:
        raise TypeError(f"{name}: expected a compact weight, got {type(weight).__name__}")


class Transformer(nn.Module):
    # Declared as modules: compact, tensor-parallel and fine-tuning wrappers replace them (a
    # layer is a Block, or a wrapper holding one as `inner`: `blocks()`).
    embed_tokens: nn.Module
    lm_head: nn.Module | None
    inv_freq: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        # Given its table: nn.Embedding's own random init of a meta tensor (how readers build
        # the model) costs ~1.2 s at start-up, importing torch's reference ops.
        table = torch.empty(cfg.vocab_size, cfg.dim)
        self.embed_tokens = nn.Embedding(
            cfg.vocab_size, cfg.dim, _weight=table if table.is_meta else nn.init.normal_(table)
        )
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # Computed on the CPU even inside a meta-device build: an op on meta tensors imports
        # torch's reference implementations on first use (~1.5 s of every start).
        with torch.device("cpu"):
            self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        # LoRA adapters held (model/lora_linear.py) and which one each batch row uses in a forward.
        self.lora = LoraSlots()

    @classmethod
    def from_state_dict(cls, cfg: ModelConfig, state: StateDict) -> Transformer:
        """Build the model around already-loaded tensors (no second copy is allocated).

        Compact weights get their own modules: a linear weight given as `Int4Weight` or
        `Int8Weight` becomes an Int4Linear / Int8Linear; `embed_tokens.weight` given as
        `EncodedRows` becomes an EncodedEmbedding, and as `Int8Weight` (tied models) an
        Int8Embedding that shares its table with the output projection.
        """
        state = dict(state)
        divisors = state.pop("rope_freqs", None)
        with torch.device("meta"):
            model = cls(cfg)
        dtype = _dense(state["norm.weight"], "norm.weight").dtype
        embed = state.get("embed_tokens.weight")
        if isinstance(embed, EncodedRows):
            del state["embed_tokens.weight"]
            model.embed_tokens = EncodedEmbedding(embed, dtype)
        elif isinstance(embed, Int8Weight):
            del state["embed_tokens.weight"]
            model.embed_tokens = Int8Embedding(embed, dtype)
            if cfg.tie_word_embeddings and "lm_head.weight" not in state:
                state["lm_head.weight"] = embed
        # Each weight is popped and handed to its module with no other reference left here:
        # fuse_projections below joins q/k/v and gate/up into new tensors, and the parts' own
        # are freed only if nothing holds them (a dict of the compact weights kept every part of
        # an 8B alive through the joins: a load peak 2.3 GB higher).
        for name in [n for n, w in state.items() if isinstance(w, (Int4Weight, Int8Weight))]:
            _attach_compact(model, name, state.pop(name))
        # Compact modules were built with their tensors; only the dense ones remain to assign.
        dense_names = {n for n, _ in model.named_parameters()} | {
            n for n, b in model.named_buffers() if b.is_meta and n != "inv_freq"
        }
        missing = dense_names - set(state)
        unexpected = set(state) - dense_names
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        model.load_state_dict(state, strict=False, assign=True)
        model.inv_freq = rope_inv_freq(cfg, None if divisors is None else _dense(divisors, "rope_freqs"))
        model.fuse_projections()
        return model.eval().requires_grad_(False)

    def fuse_projections(self) -> None:
        """Join each block's q/k/v and gate/up layers into one kernel call each where they are
        compact (model/linear.py FusedLinear); dense layers, and layers another wrapper has
        replaced since, run on their own."""
        for block in self.blocks():
            attn, mlp = block.self_attn, block.mlp
            # object.__setattr__: a FusedLinear must not join the module tree (its weights are
            # its parts' weights, already registered under their canonical names).
            object.__setattr__(attn, "fused_qkv", fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]))
            object.__setattr__(mlp, "fused_gate_up", fuse_linears([mlp.gate_proj, mlp.up_proj]))

    def blocks(self) -> list[Block]:
        """The blocks in order, unwrapped from a placement wrapper (model/offload.py OnDevice
        holds its block as `inner`)."""
        found: list[Block] = []
        for layer in self.layers:
            block = getattr(layer, "inner", layer)
            if not isinstance(block, Block):
                raise TypeError(f"layer {len(found)} is a {type(block).__name__}, not a Block")
            found.append(block)
        return found

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (norm weights are always dense in it)."""
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
        adapters: torch.Tensor | None = None,
        key_length: int | None = None,
    ) -> torch.Tensor:
        """Logits (float32) for `tokens` (B, S) at absolute `positions` (B, S).

        With a cache, keys/values are written at `positions` of cache `rows` (None: all rows in
        order) and each query attends to cache positions 0..its own position. Without one the
        S tokens attend causally to each other only. `last_only` keeps just the last position's
        logits: (B, 1, vocab) instead of (B, S, vocab). `adapters` (B,) picks each row's LoRA
        adapter slot (-1: none; None: the base model on every row). `key_length` attends over
        the first `key_length` cache positions (masked per query by its position) instead of the
        first max(positions) + 1: no shape then depends on the positions' values, which is what
        a compiled decode step needs (model/compiled.py passes the length as a shape, a symbol
        of the compiled graph).
        """
        x = self.hidden_states(
            tokens, positions, cache, rows, last_only=last_only, adapters=adapters, key_length=key_length
        )
        return self.logits(x)

    def hidden_states(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | PagedKVCache | None = None,
        rows: torch.Tensor | None = None,
        last_only: bool = False,
        adapters: torch.Tensor | None = None,
        key_length: int | None = None,
    ) -> torch.Tensor:
        """The final hidden states, after the last RMSNorm (what the output projection reads,
        and what transformers calls `last_hidden_state`): (B, S, dim), or (B, 1, dim) with
        `last_only`. Arguments as in `forward`."""
        bsz, seqlen = tokens.shape
        if positions is None:
            positions = torch.arange(seqlen, device=tokens.device).expand(bsz, seqlen)
        x: torch.Tensor = self.embed_tokens(tokens)
        step = AttentionInputs.build(positions, self.inv_freq, x.dtype, cache, rows, key_length)
        # Without adapters the selection is a no-op; skipping it keeps the step traceable.
        with self.lora.select(adapters, bsz) if adapters is not None else nullcontext():
            for layer in self.layers:
                x = layer(x, step)
        if last_only:
            x = x[:, -1:]
        hidden: torch.Tensor = self.norm(x)
        return hidden

    def attention_maps(self, tokens: torch.Tensor, adapters: torch.Tensor | None = None) -> torch.Tensor:
        """Every layer's and head's attention weights for one sequence `tokens` (1, S), with
        LoRA slot `adapters` (1,) or none: (n_layers, n_heads, S, S) float32
        (model/attention_maps.py)."""
        return attention_maps(self, tokens, adapters)

    def embedding_table(self) -> torch.Tensor:
        """The dense (vocab, dim) table a tied model's output projection multiplies by (a compact
        embedding comes with its own head, `from_state_dict`)."""
        return _dense(self.embed_tokens.weight, "embed_tokens.weight")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output projection of final hidden states, float32."""
        if self.lm_head is None:
            return F.linear(hidden, self.embedding_table()).float()
        logits: torch.Tensor
        if isinstance(self.lm_head, (Int4Linear, Int8Linear)):  # no rounding to bf16 and back
            logits = self.lm_head(hidden, out_dtype=torch.float32)
            return logits
        logits = self.lm_head(hidden)
        return logits.float()


def _dense(value: object, name: str) -> torch.Tensor:
    """`value`, which must be a dense tensor (norms, RoPE divisors, a tied embedding table)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a dense tensor, got {type(value).__name__}")
    return value
