"""`llamita bench` runs every test and reports consistent numbers."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from llamita.cli.main import app


def test_bench_json_reports_each_test():
    result = CliRunner().invoke(
        app, ["bench", "-p", "16", "-n", "4", "-b", "2", "-r", "2", "--dtype", "float32", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["test"] for r in report["results"]] == ["pp16", "tg4", "tg4x2"]
    for r in report["results"]:
        assert len(r["samples"]) == 2 and r["tokens_per_second"] > 0
        assert min(r["samples"]) <= r["tokens_per_second"] <= max(r["samples"])
    # --threads is left alone: torch's thread count is process-wide and other tests share it.
    assert report["threads"] == torch.get_num_threads() and report["peak_rss_bytes"] > 100 * 2**20
    assert report["kernels"].startswith("llamita kernels: ")  # the level, or why none loads


def test_bench_rejects_bad_counts():
    result = CliRunner().invoke(app, ["bench", "-r", "0"])
    assert result.exit_code != 0 and "repetitions" in result.output


def test_bench_bandwidth_floor_is_weights_over_copy_bandwidth():
    result = CliRunner().invoke(
        app, ["bench", "-p", "0", "-n", "4", "-r", "1", "--dtype", "float32", "--bandwidth", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    floor = report["bandwidth_floor"]
    # float32, dense and tied (the default model): every parameter is read once a token, the
    # embedding table as the output projection.
    from llamita.engine.loader import load_model

    model = load_model(None, dtype="float32").model
    n_params = sum(p.numel() for p in model.parameters())
    assert floor["weight_bytes_per_token"] == 4 * n_params + model.inv_freq.nbytes
    assert 1e8 < floor["copy_bandwidth"] < 1e13  # bytes/s: 0.1 GB/s to 10 TB/s
    assert floor["floor_tokens_per_second"] == floor["copy_bandwidth"] / floor["weight_bytes_per_token"]
    tg = report["results"][0]["tokens_per_second"]
    assert abs(floor["fraction_of_floor"] - tg / floor["floor_tokens_per_second"]) < 1e-9


def test_weight_bytes_skip_an_untied_embedding_table():
    from llamita.config import ModelConfig
    from llamita.jobs.bench import weight_bytes_per_token
    from llamita.model.transformer import Transformer

    cfg = ModelConfig(
        n_layers=1, dim=64, n_heads=2, n_kv_heads=1, ffn_dim=128, vocab_size=100, tie_word_embeddings=False
    )
    model = Transformer(cfg)
    every = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    assert weight_bytes_per_token(model) == every - model.embed_tokens.weight.nbytes
