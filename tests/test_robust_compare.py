"""benchmarks/robust_compare.py: two sets of robust erases compared with a permutation test of each mean and
Fisher's exact test of the per-seed goals, read from the same reports robust_seeds.py reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def robust_compare(benchmark_module):
    return benchmark_module("robust_compare")


def _sources(folder: Path, rows: list[tuple[float, float, float, float]]) -> Path:
    """A sources file of one robust_toy.json report per row (plain prompts, inversion, embedding, kept drop)."""
    folder.mkdir()
    names = []
    for seed, (erased, inversion, embedding, kept) in enumerate(rows):
        attack = lambda asr: {"asr": asr, "control": 1.0}  # noqa: E731
        robust = {"erased": erased, "max_kept_drop": kept, "attacks": {"inversion": attack(inversion), "embedding": attack(embedding)}}
        (folder / f"s{seed}.json").write_text(json.dumps({"settings": {"seed": seed}, "preserve": {"circle": ["square"]},
                                                          "rows": [{"concept": "circle", "robust_settings": {}, "robust": robust}]}))
        names.append(f"s{seed}.json")
    (folder / "sources.txt").write_text("\n".join(names) + "\n")
    return folder / "sources.txt"


def test_permutation_and_fisher_tests(robust_compare):
    same = [0.0, 0.1, 0.2, 0.3]
    assert robust_compare.permutation_p(same, list(reversed(same)), rounds=500) == 1.0  # every relabelling is as far apart
    apart = robust_compare.permutation_p([0.0] * 6, [0.5] * 6, rounds=2000)
    assert apart < 0.01  # 2 of the 924 labellings are as far apart as the one observed
    assert robust_compare.fisher_p(5, 10, 2, 10) == pytest.approx(0.3498, abs=1e-4)  # the textbook value
    assert robust_compare.fisher_p(0, 10, 10, 10) == pytest.approx(2 / 184756)
    assert robust_compare.fisher_p(3, 10, 3, 10) == pytest.approx(1.0)


def test_compare_reads_the_robust_rows_and_writes_the_table(tmp_path):
    low = _sources(tmp_path / "a", [(0.0, 0.0, 0.0, 0.0)] * 5 + [(0.0, 0.03125, 0.0, 0.0)] * 5)  # every goal at 10
    high = _sources(tmp_path / "b", [(0.0, 0.5, 0.4, 0.1)] * 8 + [(0.0, 0.0, 0.0, 0.0)] * 2)  # at 2
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robust_compare.py"), str(low), str(high),
                          "--labels", "first", "second", "--rounds", "2000", "--out", str(out)],
                         capture_output=True, text=True, check=True)
    data = json.loads((out / "compare.json").read_text())
    assert data["inversion"]["a"] == pytest.approx(0.015625) and data["inversion"]["b"] == pytest.approx(0.4)
    assert data["inversion"]["p"] < 0.01 and data["erased"]["p"] == 1.0
    assert data["every_goal"] == {"a": 10, "b": 2, "n_a": 10, "n_b": 10, "p": pytest.approx(0.000714, abs=1e-5)}
    assert "| inversion ASR | 1.6% | 40.0% |" in run.stdout and "| every goal at one seed | 10 of 10 | 2 of 10 |" in run.stdout
    assert (out / "compare.md").read_text() == run.stdout.rstrip("\n") + "\n"


def test_a_missing_sources_file_is_a_one_line_error(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robust_compare.py"), str(tmp_path / "nope.txt"),
                          str(tmp_path / "nope2.txt")], capture_output=True, text=True)
    assert run.returncode == 2 and "nope.txt is not a file: list robust_toy.json paths in it" in run.stderr
