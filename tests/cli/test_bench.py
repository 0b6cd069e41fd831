"""`llamita bench` runs every test and reports consistent numbers."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from llamita.cli.main import app


def test_bench_json_reports_each_test():
    result = CliRunner().invoke(app, ["bench", "-p", "16", "-n", "4", "-b", "2", "-r", "2",
                                      "--dtype", "float32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert [r["test"] for r in report["results"]] == ["pp16", "tg4", "tg4x2"]
    for r in report["results"]:
        assert len(r["samples"]) == 2 and r["tokens_per_second"] > 0
        assert min(r["samples"]) <= r["tokens_per_second"] <= max(r["samples"])
    # --threads is left alone: torch's thread count is process-wide and other tests share it.
    assert report["threads"] == torch.get_num_threads() and report["peak_rss_bytes"] > 100 * 2**20


def test_bench_rejects_bad_counts():
    result = CliRunner().invoke(app, ["bench", "-r", "0"])
    assert result.exit_code != 0 and "repetitions" in result.output
