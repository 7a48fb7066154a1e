"""The latency benchmark: report contents and files, and its refusals. Timings are not asserted."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from esd_sdk import ConfigError
from esd_sdk.cli import cli
from esd_sdk.serving.bench import benchmark


def test_benchmark_reports_both_models_on_both_backends(edited, tmp_path):
    report = benchmark(edited, ["torch", "onnxruntime"], runs=3, e2e_runs=1, warmup=1, steps=2, out=tmp_path,
                       progress=False)
    assert set(report.backends) == {"torch", "onnxruntime"}
    for backend, entry in report.backends.items():
        assert entry["unet_output_diff_edited_vs_unedited"] > 0
        for stage in ("unet_step", "end_to_end"):
            s = entry[stage]
            assert s["unedited"]["n"] == s["edited"]["n"] == (3 if stage == "unet_step" else 1)
            assert 0 < s["edited"]["p50_ms"] <= s["edited"]["p90_ms"] <= s["edited"]["p99_ms"]
            assert s["ratio"]["q25"] <= s["ratio"]["median"] <= s["ratio"]["q75"]
    assert report.backends["torch"]["unet_step"]["vs_torch"] == 1.0
    assert report.backends["onnxruntime"]["image_diff_vs_first_backend"] < 1e-3  # backends agree
    assert json.loads((tmp_path / "bench.json").read_text())["edited"] == str(edited)
    table = (tmp_path / "bench.md").read_text()
    assert table.count("| torch |") == 2 and table.count("| onnxruntime |") == 2
    assert Image.open(tmp_path / "bench.png").size[0] > 300
    assert (tmp_path / "exports" / "base-unet" / "config.json").is_file()  # exports kept for the next run


def test_benchmark_refuses_the_wrong_base(edited, tiny_sdxl, tmp_path):
    with pytest.raises(ConfigError, match="is not the base .* pass the right --base"):
        benchmark(edited, ["torch"], base_model=str(tiny_sdxl), runs=1, e2e_runs=0, out=tmp_path, progress=False)


def test_cli_bench_writes_its_report(edited, tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(edited), "--backend", "torch", "--runs", "2", "--e2e-runs", "0",
                                      "--warmup", "0", "--out", str(tmp_path / "b"), "-q"])
    assert result.exit_code == 0, result.output
    assert "| torch | unet step |" in result.output and (tmp_path / "b" / "bench.png").is_file()


def test_cli_serve_errors_are_one_line(edited, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["serve", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "does not exist" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(cli, ["serve", "--model", str(edited), "--backend", "tensorrt"])
    assert result.exit_code == 1 and "run `esd-sdk export" in result.output
    result = runner.invoke(cli, ["serve", "--model", str(edited), "--port", "70000"])
    assert result.exit_code == 2 and "70000" in result.output
