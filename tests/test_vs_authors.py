"""benchmarks/vs_authors.py: its argument handling, the skip without the authors' tree, and the
equal-erasure comparison that turns two judged curves into a time ratio."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("vs_authors", ROOT / "benchmarks" / "vs_authors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_authors"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_skips_with_a_reason_without_the_authors_tree(bench, tmp_path, capsys):
    out = tmp_path / "results"
    assert bench.main(["--peer", str(tmp_path / "nowhere"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("skipped:") and "nowhere" in said and "absent" in said
    assert not out.exists()  # nothing written, nothing run
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "esd_sd.py").write_text("")
    assert "utils/sd_utils.py" in bench.find_peer(tmp_path / "partial")


def test_arguments(bench):
    args = bench.parse(["--authors-iterations", "40", "--authors-lr", "3e-4", "--steps", "ddim10-k4=12"])
    assert args.lr == 3e-4  # esd-sdk's lr follows the authors' unless given
    assert args.steps == {"ddim10-k4": 12} and args.checkpoint_every == 5 and args.judge
    assert args.configs == list(bench.CONFIGS)
    assert not bench.parse(["--model", "mid", "--lr", "1e-3"]).judge  # random weights: no judge
    with pytest.raises(SystemExit):
        bench.parse(["--steps", "nonsense=3"])
    with pytest.raises(SystemExit):
        bench.parse(["--steps", "ddim10=0"])
    assert bench.checkpoint_steps(10, 4) == [4, 8, 10] and bench.checkpoint_steps(10, 0) == [10]


def test_equal_erasure_ratio(bench):
    P = bench.Point
    base = P(0.0, 1.0, 1.0)
    authors = [base, P(50, 0.8, 0.95), P(100, 0.5, 0.9), P(200, 0.5, 0.85)]
    ours = [base, P(5, 0.7, 1.0), P(10, 0.45, 0.6), P(20, 0.4, 0.9), P(40, 0.1, 0.9)]
    got = bench.equal_erasure(authors, ours)
    # target: the authors' end (50% erased), first reached by them at 100 s with 90% kept;
    # ours at 10 s erases enough but keeps only 60% (below 90 - 5 pts), so 20 s counts
    assert got["target_erased"] == 0.5 and got["authors_s"] == 100 and got["kept_floor"] == pytest.approx(0.85)
    assert got["esd_sdk_s"] == 20 and got["ratio"] == pytest.approx(5.0) and not got["ratio_is_lower_bound"]

    # an explicit target the authors never reach: their whole run is a lower bound on their time
    got = bench.equal_erasure(authors, ours, target=0.2)
    assert got["esd_sdk_s"] == 40 and got["ratio"] == pytest.approx(200 / 40) and got["ratio_is_lower_bound"]

    # esd-sdk never reaches it within its kept floor
    assert bench.equal_erasure(authors, [base, P(10, 0.3, 0.5)])["ratio"] is None

    # the authors erased nothing: no ratio, and the report says why
    got = bench.equal_erasure([base, P(100, 1.0, 1.0)], ours)
    assert got["ratio"] is None and "erased nothing" in got["why"]
