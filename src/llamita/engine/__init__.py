"""The runtime, the request path: loading a model (`loader`), the paged KV cache's
`block_manager`, `sequence`, `scheduler`, `sampler`, stop strings, grammar constraints, the
static-cache `generator`, the continuous-batching `llm_engine`, LoRA attachment, tensor
parallelism, embeddings and prompt scoring. The public API (`api/`) and the offline jobs
(`jobs/`) sit above it; it imports neither."""
