"""benchmarks/kept_leak.py: of a kept concept's lost images, how many the eval saw drawn as the erased concept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from esd_sdk.evaluate import EvalReport, EvalRow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def kept_leak(benchmark_module):
    return benchmark_module("kept_leak")


def _report(rows: list[EvalRow]) -> EvalReport:
    return EvalReport("edit", "toy", 8, 0, {}, protocol={"concepts": ["circle"]}, rows=rows)


def test_lost_kept_images_are_split_into_destroyed_and_moved(kept_leak):
    # 32 crosses in the base, 19 in the edit (13 lost); 10 of the edit's cross images show a circle, none of the base's
    report = _report([EvalRow("erased", "circle", 1.0, 0.0, 32, 1.0, 0.0),
                      EvalRow("kept", "square", 1.0, 1.0, 32, 0.0, 0.0),
                      EvalRow("kept", "cross", 1.0, 19 / 32, 32, 0.0, 10 / 32)])
    figures = kept_leak.leak(report)
    assert figures["kept"]["cross"] == {"drop": pytest.approx(13 / 32), "images": 32, "lost": 13, "moved": 10}
    assert figures["kept"]["square"]["lost"] == figures["kept"]["square"]["moved"] == 0
    assert figures["max_kept_drop"] == pytest.approx(13 / 32)
    assert figures["kept_shows_erased"] == pytest.approx(5 / 32)  # the mean over the kept prompts
    text = kept_leak.markdown([{"edit": "e", **figures}], 8, 0)
    assert "| e | 0.0% | 40.6 pts | 0.0% / 15.6% | cross 13 (10) |" in text
    assert "13 kept images lost, 10 kept images more than the base's drawn as the erased concept (77% of the lost)" in text


def test_a_directory_that_is_not_an_edit_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kept_leak.py"), str(tmp_path), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "not an esd-sdk erase output (no esd.json)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_edits_of_different_concepts_are_refused(tmp_path):
    """The base model's images are measured once for all the edits, so they must erase the same concepts."""
    from esd_sdk import erase, load_base

    base = load_base("toy")
    for concept in ("circle", "square"):
        erase(base, concept, method="x", out=tmp_path / concept, steps=1, ddim_steps=2, progress=False)
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kept_leak.py"), str(tmp_path / "circle"),
                             str(tmp_path / "square"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "the edits erase different concepts" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
