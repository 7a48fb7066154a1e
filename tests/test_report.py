"""eval.html and the manifest summary, on a real (one-step) toy erase: the page embeds every
image it shows, needs nothing beside it, and gains the η-sweep plot once a sweep exists."""

from __future__ import annotations

import base64
import re

import pytest

from esd_sdk.artifact import load_manifest
from esd_sdk.config import EraseConfig
from esd_sdk.evaluate import evaluate, sweep
from esd_sdk.report import eval_html, manifest_summary, review_prompts
from esd_sdk.training import erase


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "erased-circle"
    erase("toy", out=out, config=EraseConfig(concepts=["circle"], method="u", steps=1), progress=False)
    evaluate(out, n=1, steps=2)
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


def test_eval_writes_a_self_contained_eval_html(evaluated):
    page = (evaluated / "eval" / "eval.html").read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", page) and "<script" not in page  # nothing to fetch or run
    images = _images(page)
    grids = [(evaluated / "eval" / f"grid_{s}.png").read_bytes() for s in ("erased", "paraphrase", "kept")]
    assert all(grid in images for grid in grids)  # the grids themselves, embedded
    assert len(images) == len(grids) + 1 and images[0].startswith(b"\x89PNG")  # and the scores chart
    assert "<td>ESD-u</td>" in page and "η sweep" not in page
    for row in load_manifest(evaluated)["scores"]["toy_judge"]["rows"]:
        assert f"<td>{row['prompt_set']}</td><td>{row['key']}</td><td>{100 * row['base']:.1f}%</td>" in page


def test_eval_html_shows_the_eta_sweep_once_there_is_one(evaluated):
    sweep(evaluated, [1.0], n=1, steps=2, keep=["square"])  # into evaluated/sweep, where eval.html looks
    page = eval_html(evaluated / "eval")
    assert "<h2>η sweep</h2>" in page and len(_images(page)) == 5


def test_the_summary_and_presets_come_from_the_manifest(evaluated):
    manifest = load_manifest(evaluated)
    summary = manifest_summary(manifest)
    assert (summary["concepts"], summary["method"], summary["eta"]) == (["circle"], "u", 1.0)
    assert summary["scores"]["toy_judge"]["erased_base"] == manifest["scores"]["toy_judge"]["erased_base"]
    # the review page's "kept prompts drawing it" row: carried when the eval counted it, absent before
    assert summary["scores"]["toy_judge"]["kept_shows_erased"] == manifest["scores"]["toy_judge"]["kept_shows_erased"]
    del manifest["scores"]["toy_judge"]["kept_shows_erased"]
    assert "kept_shows_erased" not in manifest_summary(manifest)["scores"]["toy_judge"]
    # and its "kept in the colour asked" row
    assert summary["scores"]["toy_judge"]["kept_colour"] == manifest["scores"]["toy_judge"]["kept_colour"]
    assert 0.0 <= summary["scores"]["toy_judge"]["kept_colour_base"] <= 1.0
    assert "attacks" not in summary  # none has run
    assert review_prompts(manifest) == [{"label": "erased", "prompt": "a red circle"},
                                        {"label": "paraphrase", "prompt": "a red disk"},
                                        {"label": "kept", "prompt": "a red square"}]
