"""`llamita memory`: the estimate for a real file against the resident memory measured while
it generates, and the preset tables against the published figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamita.cli.main import app
from llamita.jobs.memory import breakdown, estimate_file

ROOT = Path(__file__).resolve().parents[2]


def _json(args: list[str]) -> dict:
    result = CliRunner().invoke(app, ["memory", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_estimate_is_within_10_percent_of_measured_rss(default_model_path):
    """benchmarks/memory.py loads the default model in a fresh process and generates; its
    resident memory then is what `llamita memory` must predict for that KV cache length."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--tokens", "16"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(out.stdout)
    if measured["dtype"] != "bfloat16":
        pytest.skip("the estimate is for the bfloat16 CPU path (no AVX-512 BF16 here)")
    cfg, est = estimate_file(default_model_path)
    predicted = breakdown(cfg, est, measured["kv_cache_len"]).total
    assert predicted == pytest.approx(measured["rss_after_generate"], rel=0.10)


def test_preset_table_has_the_seed_figures():
    """~16 GB for 8B in FP16, ~140 GB for 70B, ~800 GB for 405B (weights alone)."""
    for preset, weights_gb in (("llama-3.1-8b", 16), ("llama-3.1-70b", 141), ("llama-3.1-405b", 811)):
        (e,) = _json(["--preset", preset, "-q", "F16", "--ctx", "8192"])["estimates"]
        assert e["weights"] / 1e9 == pytest.approx(weights_gb, rel=0.02)
        assert e["total"] > e["weights"] + e["kv_cache"]
    rows = _json(["--preset", "llama-3.1-8b", "-q", "Q4_K_M", "-q", "Q8_0", "--ctx", "8192", "--ctx", "131072"])[
        "estimates"
    ]
    by = {(r["type"], r["ctx"]): r for r in rows}
    assert by[("Q4_K_M", 8192)]["total"] < by[("Q8_0", 8192)]["total"]  # 8B in Q4 vs Q8
    assert by[("Q4_K_M", 131072)]["kv_cache"] == 16 * 2**30  # 128 KiB a token, bf16


def test_kv_type_and_batch_scale_the_cache():
    base = _json(["--preset", "llama-3.2-1b", "-q", "Q8_0", "--ctx", "4096"])["estimates"][0]
    q8 = _json(["--preset", "llama-3.2-1b", "-q", "Q8_0", "--ctx", "4096", "--kv-type", "q8_0", "--batch", "4"])[
        "estimates"
    ][0]
    assert q8["kv_cache"] == pytest.approx(base["kv_cache"] * 4 * 17 / 32, rel=1e-3)


def test_bad_options():
    runner = CliRunner()
    for args in (
        ["--preset", "llama-9"],
        ["--kv-type", "q4"],
        ["--preset", "llama-3.1-8b", "x.gguf"],
        ["-q", "Q4_K_M"],
        ["--ctx", "0"],
    ):
        result = runner.invoke(app, ["memory", *args])
        assert result.exit_code != 0, args
