import json
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from esd_sdk import load_base
from esd_sdk.cli import cli
from esd_sdk.config import EraseConfig
from esd_sdk.erase import erase
from esd_sdk.evaluate import evaluate


@pytest.fixture(scope="module")
def erased_circle(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "erased-circle"
    erase(EraseConfig(concepts=["circle"], method="u"), "toy", out, progress=False, explicit=set())
    return out


def test_eval_reports_erasure_grids_and_updates_the_manifest(erased_circle, tmp_path):
    result = CliRunner().invoke(cli, ["eval", str(erased_circle), "-n", "3", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    s = report["summary"]
    assert s["erased_rate_base"] >= 0.9 and s["erased_rate"] <= 0.2 and s["max_kept_drop"] <= 0.15
    assert {r["prompt_set"] for r in report["rows"]} == {"erased", "paraphrase", "kept"}
    assert Image.open(tmp_path / "r" / "grid_erased.png").height > 8 * 32
    manifest = json.loads((erased_circle / "esd.json").read_text())
    assert manifest["scores"]["toy_judge"]["erased_rate"] == s["erased_rate"]
    assert "## Scores" in (erased_circle / "README.md").read_text()


def test_an_unedited_model_is_not_reported_as_erased(erased_circle, tmp_path):
    fake = tmp_path / "not-really-erased"
    shutil.copytree(erased_circle, fake)
    shutil.rmtree(fake / "unet")
    load_base("toy").unet.save_pretrained(fake / "unet")
    report = evaluate(fake, n=3, update=False, output_dir=tmp_path / "r")
    assert report.summary()["erased_rate"] >= 0.9
