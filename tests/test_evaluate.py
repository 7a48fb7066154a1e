import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from esd_sdk import load_base
from esd_sdk.cli import cli
from esd_sdk.evaluate import evaluate, sweep
from esd_sdk.artifact import load_manifest


@pytest.fixture(scope="module")
def erased_circle(toy_circle_u, tmp_path_factory):
    """ESD-u "circle" at the toy defaults: this module's own copy, since eval writes into it."""
    return Path(shutil.copytree(toy_circle_u, tmp_path_factory.mktemp("eval") / "erased-circle"))


def test_eval_reports_erasure_grids_and_updates_the_manifest(erased_circle, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(erased_circle), "-n", "3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    s = report["summary"]
    # ESD-u "circle" costs "square" 0-19% at the toy defaults, depending on float summation order
    # (thread count): benchmarks/results/toy_erasure
    assert s["erased_base"] >= 0.9 and s["erased"] <= 0.2 and s["max_kept_drop"] <= 0.25
    assert s["paraphrase_base"] >= 0.9 and s["paraphrase"] <= 0.3
    assert {r["prompt_set"] for r in report["rows"]} == {"erased", "paraphrase", "kept"}
    assert report["protocol"]["scorer"] == "toy"
    assert Image.open(tmp_path / "r" / "grid_erased.png").height > 8 * 32
    manifest = json.loads((erased_circle / "esd.json").read_text())
    assert manifest["scores"]["toy_judge"]["erased"] == s["erased"]
    assert "## Scores" in (erased_circle / "README.md").read_text()


def test_an_unedited_model_is_not_reported_as_erased(erased_circle, tmp_path):
    fake = tmp_path / "not-really-erased"
    shutil.copytree(erased_circle, fake)
    shutil.rmtree(fake / "unet")
    load_base("toy").unet.save_pretrained(fake / "unet")
    report = evaluate(fake, n=2, update=False, output_dir=tmp_path / "r")
    s = report.summary()
    assert s["erased"] >= 0.9 and s["erased"] == s["erased_base"] and s["max_kept_drop"] == 0


def test_sweep_reerases_from_the_base_at_each_eta_and_plots(erased_circle, tmp_path):
    short = tmp_path / "short"  # the same erase cut to 3 steps, so that the sweep stays fast
    shutil.copytree(erased_circle, short)
    manifest = load_manifest(short)
    manifest["config"]["steps"] = 3
    (short / "esd.json").write_text(json.dumps(manifest))
    report = sweep(short, [1.0, 0.5, 1.0], n=1, keep=["square"], steps=5, output_dir=tmp_path / "s")
    assert [p["eta"] for p in report.points] == [0.5, 1.0, 1.0]
    hashes = [p["edited_hash"] for p in report.points]
    assert hashes[0] != hashes[1] and manifest["base_hash"] not in hashes
    assert hashes[1] == hashes[2]  # each erase starts again from the base weights
    saved = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert saved["erase_config"]["steps"] == 3 and saved["base"]["erased_base"] >= 0.75
    assert "| 0.5 |" in (tmp_path / "s" / "sweep.md").read_text()
    assert Image.open(tmp_path / "s" / "sweep.png").size[0] >= 800
    assert load_manifest(short) == manifest  # the artifact is not touched


def test_eval_names_the_missing_scorer_model(erased_circle, tmp_path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,concept\na red circle,circle\na blue square,square\n")
    result = CliRunner().invoke(cli, ["eval", str(erased_circle), "--prompts", str(csv), "--scorer", "clip"])
    assert result.exit_code == 1 and "--clip-model" in result.output and "Traceback" not in result.output
