"""The runtime, the request path: loading a model (`loader`), the paged KV cache's
`block_manager`, `sequence`, `scheduler`, `sampler`, stop strings, grammar constraints, the
one decode loop `llm_engine` (continuous batching; the Python API and the server both run on
it) and its compiled step's background builder, LoRA attachment, tensor parallelism, embeddings and prompt scoring. The public API (`api/`) and the offline jobs
(`jobs/`) sit above it; it imports neither."""
