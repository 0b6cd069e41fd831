"""Offline jobs, one module per command that is not the request path: `quantize`, `lora_merge`
(`llamita lora merge`), `memory` (the RAM estimate), `model_info` (`llamita info`), `bench`,
`perplexity` and `finetune`. They use the runtime (`engine/`) and the formats (`weights/`);
nothing in the runtime imports them."""
