"""The default path on a CPU with AVX2 only (issue 23), proven on a better CPU by LLAMITA_ISA=avx2,
which hides the vector flags above AVX2 from llamita's choices. Flags are read once per
process, so each configuration loads the default model in its own subprocess.

- `dtype="auto"` picks float32 there (no fast bfloat16) and, with llamita's AVX2 kernels,
  keeps the Q4_1 weights 4-bit and the tied Q8_0 table int8 instead of expanding them;
- its greedy answer and logits are those of the same compact float32 model on this machine's
  best kernel level (every level returns the same bits, tests/kernels/test_kernel_levels.py);
- its logits stay within a stated distance of the dense float32 reference (the int8 rounding
  of activations per 32 values is llama.cpp's numerics; measured on this prompt: mean KL
  0.017 nats, max deviation 7.5% of the largest logit, argmax agreement 0.9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llamita.kernels import native

PROMPT = "The quick brown fox jumps over the lazy dog because"
QUESTION = "What is the capital of France? Answer in one sentence."
SCRIPT = """
import json, sys, torch
from llamita import LLM, SamplingParams
from llamita.engine.loader import load_model
from llamita.kernels import native
from llamita.model.linear import Int4Linear, Int8Linear

kwargs, out = json.loads(sys.argv[1]), sys.argv[2]
PROMPT, QUESTION = json.loads(sys.argv[3])
loaded = load_model(device="cpu", **kwargs)
llm = LLM.from_loaded(loaded)
kinds = [type(m).__name__ for m in loaded.model.modules()]
resident = sum(t.nbytes for t in [*loaded.model.parameters(), *loaded.model.buffers()])
ids = torch.tensor([llm.encode_prompt(PROMPT)])
with torch.inference_mode():
    torch.save(loaded.model(ids)[0], out)
answer = llm.chat([{"role": "user", "content": QUESTION}], SamplingParams(temperature=0, max_tokens=24))
print(json.dumps({"level": native.kernel_level(), "dtype": str(loaded.dtype), "resident": resident,
                  "int4": kinds.count("Int4Linear"), "int8": kinds.count("Int8Linear"),
                  "text": answer.text, "tokens": answer.token_ids}))
"""

pytestmark = pytest.mark.skipif(
    not native._BY_NAME["avx2"].cpu_flags <= native._proc_cpu_flags(), reason="the CPU lacks AVX2/FMA/F16C"
)


def _run(tmp_path: Path, name: str, env: dict[str, str], **kwargs: object) -> tuple[dict, torch.Tensor]:
    out = tmp_path / f"{name}.pt"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(kwargs), str(out), json.dumps([PROMPT, QUESTION])],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(out)


def test_auto_on_avx2_is_compact_and_tracks_float32(tmp_path: Path, default_model_path: Path, llm_f32) -> None:
    avx2, logits = _run(tmp_path, "avx2", {"LLAMITA_ISA": "avx2"}, dtype="auto")
    if avx2["level"] != "avx2":
        pytest.skip(f"llamita's AVX2 kernels did not load: {native.kernel_level_skipped('avx2')}")
    assert avx2["dtype"] == "torch.float32"
    assert avx2["int4"] == 7 * 30 and avx2["int8"] == 1  # every projection 4-bit, the tied head int8
    assert avx2["resident"] < 130e6  # dense float32 would hold ~540 MB
    assert "Paris" in avx2["text"]

    ids = torch.tensor([llm_f32.encode_prompt(PROMPT)])
    with torch.inference_mode():
        ref = llm_f32.loaded.model(ids)[0]  # dense float32: the reference
    p, q = ref.log_softmax(-1), logits.log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert kl < 0.04
    assert float((logits - ref).abs().max() / ref.abs().max()) < 0.1
    assert (logits.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8

    best = native.kernel_level()
    if best in (None, "avx2"):
        return  # nothing better on this CPU to compare the AVX2 run with
    other, other_logits = _run(tmp_path, best, {}, dtype="float32", compact=True)
    assert other["level"] == best
    assert other["tokens"] == avx2["tokens"] and other["text"] == avx2["text"]
    assert float((other_logits - logits).abs().max()) <= 1e-4 * float(logits.abs().max())
