"""The Llama 3.x network in PyTorch (docs/llama-reference.md §2), and what holds its state.

    transformer.py        Transformer: embeddings, blocks (RMSNorm, GQA attention with RoPE,
                          SwiGLU), the output head; full-sequence, cached and paged forwards
    rope.py               rotary embedding with Llama 3.1 frequency scaling
    linear.py             Linear layers over packed 4-bit / int8 weights (the kernels/ matmuls)
    embedding.py          token embeddings decoded only at the rows a step looks up
    kv_cache.py           the static KV cache; paged_kv_cache.py the paged one (the server's)
    compiled.py           the decode step compiled ahead of time (AOTInductor), static cache;
    compiled_paged.py     and over the paged cache
    lora_linear.py        LoRA adapters applied without merging, several at once by row
    attention_maps.py     the attention weights of the real forward pass (the glass box)
    offload.py            the first N blocks on a GPU; tensor_parallel.py one rank's shard

No scheduling, sampling or files here: the runtime (engine/) drives it, weights/ fills it.
"""
