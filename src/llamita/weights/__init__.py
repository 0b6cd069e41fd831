"""Model files in and out: checkpoints read into one canonical form, and GGUF written.

    gguf_reader.py   the GGUF container (memory-mapped; header, metadata, tensor views)
    gguf.py          GGUF files of architecture `llama` -> ModelConfig + canonical state dict
    hf.py, meta.py   Hugging Face safetensors folders; Meta's consolidated.NN.pth + params.json
    checkpoint.py    any of the three behind one `Checkpoint`; what a GGUF writer needs of it
    quants.py        GGML block formats: sizes and torch (de)quantizers (checked against `gguf`)
    kquants.py       K-quant encoders byte-equal to llama.cpp's; quant_mix.py: which type a
                     tensor gets in Q4_K_M and the other named mixes; gguf_writer.py writes it
    q4_pack.py       4-bit GGUF blocks straight into the kernels' packed layout at load
    lora_files.py    PEFT and GGUF LoRA adapter files; shard.py: one tensor-parallel rank's slice
    malloc.py        glibc's malloc held so a load's temporaries are given back

Facts about the formats are in docs/llama-reference.md (§5-§7). Imports tokenizer/ and kernels/
only; nothing here runs a model.
"""
