"""KL divergence as llama-perplexity --kl-divergence measures it, against statements written here.

The references are independent of the code under test: the base file is parsed with `struct`
and numpy from llama.cpp's documented layout, the KL divergence is computed in float64 from
logits obtained by a plain loop over llama.cpp's windows (n_ctx tokens, BOS on each when the
tokenizer adds one, logits at n_ctx/2 .. n_ctx-2 scored against the next token).
"""

from __future__ import annotations

import copy
import math
import struct

import gguf
import numpy as np
import pytest
import torch

from llamita.engine.loader import load_model
from llamita.errors import InvalidParameterError
from llamita.jobs.kl_divergence import kl_divergence, summarize, token_kl
from llamita.jobs.log_probs_file import dequantize_log_probs, quantize_log_probs
from llamita.jobs.perplexity import perplexity

from tiny_models import random_hf_weights, tiny_hf_config, write_gguf

TEXT = (
    "A cartographer walked the coast for three summers, measuring each bay with a chain and a "
    "compass. Her maps showed the sandbanks that moved with every storm, the wells that dried in "
    "August and the paths the shepherds used. Sailors bought copies in the harbour town, and for "
    "fifty years no ship that carried one ran aground on the northern shoals. "
) * 2
N_CTX = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny float32 model (the base) and the same weights through Q4_0 (the model under test),
    both loaded dense in float32, plus the folder to write bases in."""
    folder = tmp_path_factory.mktemp("kld")
    cfg = tiny_hf_config()
    sd = random_hf_weights(cfg, seed=11)
    base = write_gguf(folder / "base.gguf", cfg, sd, context_length=128)
    q4 = write_gguf(folder / "q4.gguf", cfg, sd, qtype=gguf.GGMLQuantizationType.Q4_0, context_length=128)
    return load_model(base, dtype="float32", device="cpu"), load_model(q4, dtype="float32", device="cpu"), folder


def reference_windows(tokens: list[int], n_ctx: int, bos_id: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(window ids (n_ctx,), positions' next tokens (n_ctx/2 - 1,))], windows not overlapping,
    the tail that does not fill one dropped."""
    out = []
    for i in range(len(tokens) // n_ctx):
        window = list(tokens[i * n_ctx : (i + 1) * n_ctx])
        if bos_id is not None:
            window[0] = bos_id
        out.append((torch.tensor(window), torch.tensor(window[n_ctx // 2 + 1 :])))
    return out


def scored_logits(model, window: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(window[None])[0].double()[N_CTX // 2 : N_CTX - 1]  # positions 32 .. 62


def parse_base_file(path) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """(n_ctx, n_vocab, n_chunks), tokens, (n_chunks, rows, n_vocab) float64 log-probs, read as
    llama.cpp's kl_divergence() reads the file."""
    data = path.read_bytes()
    assert data[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunks = struct.unpack_from("<Iii", data, 8)
    tokens = np.frombuffer(data, "<i4", n_ctx * n_chunks, 20)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = n_ctx - 1 - n_ctx // 2
    offset = 20 + 4 * n_ctx * n_chunks
    assert len(data) == offset + 2 * nv * rows * n_chunks
    q = np.frombuffer(data, "<u2", offset=offset).reshape(n_chunks, rows, nv)
    head = np.ascontiguousarray(q[..., :4]).view("<f4").astype(np.float64)  # (.., 2): scale, min_log_prob
    log_probs = head[..., :1] * q[..., 4 : 4 + n_vocab] + head[..., 1:2]
    return (n_ctx, n_vocab, n_chunks), tokens, log_probs


def float64_kl(base_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(base || model) per row, float64, over the base tokens with log-prob above -16."""
    log_p = torch.log_softmax(base_logits.double(), -1)
    log_q = torch.log_softmax(logits.double(), -1)
    return torch.where(log_p > -16, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def test_base_file_holds_the_windows_and_log_probs(models, tmp_path):
    base, _, _ = models
    path = tmp_path / "base.kld"
    result = perplexity(base.model, base.tokenizer, TEXT, n_ctx=N_CTX, kl_divergence_base=path)
    (n_ctx, n_vocab, n_chunks), tokens, log_probs = parse_base_file(path)
    text_tokens = base.tokenizer.encode(TEXT)
    assert (n_ctx, n_vocab, n_chunks) == (N_CTX, base.config.vocab_size, len(text_tokens) // N_CTX) == (64, 264, 9)
    assert tokens.tolist() == text_tokens[: n_chunks * N_CTX]  # as tokenized, no BOS put in
    assert log_probs.shape[1] == N_CTX // 2 - 1 == result.tokens_scored // n_chunks
    nll = []
    for i, (window, targets) in enumerate(reference_windows(text_tokens, N_CTX, None)):
        ref = torch.log_softmax(scored_logits(base.model, window), -1).numpy()
        # 16-bit linear steps over at most 16 nats: every log-prob within half a step.
        assert np.abs(log_probs[i] - ref).max() < 16 / 65535
        nll += (-ref[np.arange(len(targets)), targets.numpy()]).tolist()
    assert result.perplexity == pytest.approx(math.exp(np.mean(nll)), rel=1e-6)
    assert not list(tmp_path.glob("*.partial"))


def test_model_against_itself_is_zero(models, tmp_path):
    base, _, _ = models
    path = tmp_path / "self.kld"
    ppl = perplexity(base.model, base.tokenizer, TEXT, n_ctx=N_CTX, kl_divergence_base=path)
    r = kl_divergence(base.model, base.tokenizer, path)
    assert abs(r.mean_kld) < 1e-5 and abs(r.kld_max) < 1e-4
    assert r.same_top_p == 1.0
    assert r.perplexity == pytest.approx(ppl.perplexity, rel=1e-6)  # float64 here, float32 there
    assert r.perplexity_base == pytest.approx(ppl.perplexity, rel=1e-4)
    assert (r.n_ctx, r.n_chunks, r.tokens_scored) == (N_CTX, ppl.n_chunks, ppl.tokens_scored)


@pytest.mark.parametrize("add_bos", [False, True])
def test_quantized_model_matches_a_float64_statement(models, tmp_path, add_bos):
    base, q4, _ = models
    tokenizer = copy.copy(base.tokenizer)
    tokenizer.add_bos = add_bos  # llama.cpp then puts BOS on every window, in both runs
    path = tmp_path / "base.kld"
    perplexity(base.model, tokenizer, TEXT, n_ctx=N_CTX, kl_divergence_base=path)
    r = kl_divergence(q4.model, tokenizer, path, chunks=5)

    tokens = tokenizer.encode(TEXT, add_bos=add_bos)
    kld, nll, nll_base, same = [], [], [], []
    for window, targets in reference_windows(tokens, N_CTX, tokenizer.bos_id if add_bos else None)[:5]:
        b, q = scored_logits(base.model, window), scored_logits(q4.model, window)
        kld.append(float64_kl(b, q))
        nll.append(torch.nn.functional.cross_entropy(q, targets, reduction="none"))
        nll_base.append(torch.nn.functional.cross_entropy(b, targets, reduction="none"))
        same.append(q.argmax(-1) == b.argmax(-1))
    kld_all = torch.cat(kld)
    assert r.tokens_scored == kld_all.numel() == 5 * 31
    assert float(kld_all.mean()) > 1e-4  # Q4_0 moves the distributions: the test can fail
    assert r.mean_kld == pytest.approx(float(kld_all.mean()), rel=1e-3, abs=2e-6)
    assert r.mean_kld_stderr == pytest.approx(float(kld_all.std(unbiased=False)) / math.sqrt(154), rel=1e-2)
    assert r.kld_max == pytest.approx(float(kld_all.max()), rel=1e-3, abs=2e-6)
    assert r.kld_median == pytest.approx(float(kld_all.median()), rel=2e-2, abs=2e-6)  # odd count: the middle one
    assert r.perplexity == pytest.approx(math.exp(float(torch.cat(nll).mean())), rel=1e-6)
    assert r.perplexity_base == pytest.approx(math.exp(float(torch.cat(nll_base).mean())), rel=1e-4)
    assert r.same_top_p == pytest.approx(float(torch.cat(same).double().mean()))


def test_token_kl_over_small_logits():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 11, generator=g, dtype=torch.float64) * 3
    base[5, :4] -= 40  # a wide row: four tokens more than 16 nats below the top read back as ≤ -16
    model = base + torch.randn(6, 11, generator=g, dtype=torch.float64)
    targets = torch.tensor([0, 3, 10, 7, 7, 6])  # not a tail token: those read back clamped
    rows = quantize_log_probs(base.float())
    log_p = dequantize_log_probs(rows, 11)
    assert (log_p[5, :4] <= -16).all()
    t = token_kl(model.float(), log_p, targets)

    ref_log_p = torch.log_softmax(base, -1)
    ref_log_q = torch.log_softmax(model.float().double(), -1)
    ref_kld = float64_kl(base, model.float())
    torch.testing.assert_close(t.kld, ref_kld, rtol=0, atol=5e-4)
    rows_idx = torch.arange(6)
    torch.testing.assert_close(t.nll, -ref_log_q[rows_idx, targets], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t.nll_base, -ref_log_p[rows_idx, targets], rtol=0, atol=16 / 65535)
    p_diff = ref_log_q[rows_idx, targets].exp() - ref_log_p[rows_idx, targets].exp()
    torch.testing.assert_close(t.p_diff, p_diff, rtol=0, atol=1e-4)
    assert t.same_top.tolist() == (model.argmax(-1) == base.argmax(-1)).tolist()


def test_quantized_rows_follow_llama_cpps_rule():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, generator=g) * 6
    logits[3] = 2.5  # all equal: scale 0, every value stored as 0 and read back as min_log_prob
    rows = quantize_log_probs(logits)
    assert rows.dtype == np.uint16 and rows.shape == (4, 2 * 5 + 4)  # 9 values padded to 10
    x = logits.double().numpy()
    top = x.max(-1, keepdims=True)
    low = np.maximum(x.min(-1, keepdims=True), top - 16)
    lse = np.log(np.exp(x - top).sum(-1, keepdims=True))
    head = rows[:, :4].copy().view("<f4")
    np.testing.assert_allclose(head[:, 0], ((top - low) / 65535)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(head[:, 1], (low - top - lse)[:, 0], rtol=1e-6, atol=1e-6)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(x > low, np.round((x - low) / ((top - low) / 65535)), 0)
    expected[3] = 0
    assert np.abs(rows[:, 4:13].astype(np.int64) - expected).max() <= 1  # float32 rounding at .5
    assert (rows[:, 13] == 0).all()
    assert dequantize_log_probs(rows, 9)[3].tolist() == pytest.approx([-math.log(9)] * 9, abs=1e-6)


def test_summary_statistics_follow_llama_cpp():
    kld = torch.arange(1.0, 12.0, dtype=torch.float64)  # 1 .. 11
    zeros = torch.zeros(11, dtype=torch.float64)
    from llamita.jobs.kl_divergence import TokenKL

    t = TokenKL(kld, zeros + 1.0, zeros + 0.5, zeros, torch.tensor([True] * 8 + [False] * 3))
    r = summarize(t, 64, 1, 0.0)
    assert r.mean_kld == 6.0
    assert r.mean_kld_stderr == pytest.approx(math.sqrt(10.0 / 10))  # population var 10, / (n - 1)
    assert (r.kld_min, r.kld_median, r.kld_max) == (1.0, 6.0, 11.0)
    assert r.kld_p90 == pytest.approx(10.0) and r.kld_p99 == pytest.approx(10.9)  # 1 + f × 10, linear
    assert r.same_top_p == pytest.approx(8 / 11)
    assert r.same_top_p_stderr == pytest.approx(math.sqrt(8 / 11 * 3 / 11 / 10))
    assert r.log_ppl_ratio == pytest.approx(0.5)
    even = summarize(TokenKL(kld[:10], zeros[:10], zeros[:10], zeros[:10], t.same_top[:10]), 64, 1, 0.0)
    assert even.kld_median == 5.5  # the mean of the two middle values


def test_bad_bases_are_typed_errors(models, tmp_path):
    base, _, folder = models
    with pytest.raises(InvalidParameterError, match="not found"):
        kl_divergence(base.model, base.tokenizer, tmp_path / "none.kld")
    junk = tmp_path / "junk.kld"
    junk.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(InvalidParameterError, match="does not start with _logits_"):
        kl_divergence(base.model, base.tokenizer, junk)
    good = tmp_path / "good.kld"
    perplexity(base.model, base.tokenizer, TEXT, n_ctx=N_CTX, chunks=2, kl_divergence_base=good)
    cut = tmp_path / "cut.kld"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(InvalidParameterError, match="truncated or corrupt"):
        kl_divergence(base.model, base.tokenizer, cut)
    cfg = tiny_hf_config(vocab_size=300)
    other = load_model(
        write_gguf(folder / "v300.gguf", cfg, random_hf_weights(cfg, seed=2), context_length=128), dtype="float32"
    )
    with pytest.raises(InvalidParameterError, match="vocabulary of 264 tokens; this model has 300"):
        kl_divergence(other.model, other.tokenizer, good)


def test_an_interrupted_base_leaves_no_file(models, tmp_path):
    base, _, _ = models
    path = tmp_path / "base.kld"

    def stop(progress):
        if progress.index == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        perplexity(base.model, base.tokenizer, TEXT, n_ctx=N_CTX, on_chunk=stop, kl_divergence_base=path)
    assert list(tmp_path.iterdir()) == []
