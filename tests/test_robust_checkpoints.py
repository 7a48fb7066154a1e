"""benchmarks/robust_checkpoints.py: the edit at step k of one robust erase is exactly what a k-step
erase of the same settings writes (with the inner attack from step 0, nothing else depends on the
length of the run), the last step is the erase itself, and a tail mean (--average-from) is the mean
of the snapshots it spans."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from esd_sdk.delta import compute_delta, read_delta


@pytest.fixture
def robust_checkpoints(benchmark_module):
    return benchmark_module("robust_checkpoints")


def test_each_snapshot_is_the_erase_of_that_many_steps(robust_checkpoints, tmp_path):
    import esd_sdk
    from toy_erasure import toy_base

    base = toy_base()
    settings = dict(method="u", seed=3, steps=4, robust_start=0.0, robust_attack_steps=2, robust_images=2, robust_batch=2,
                    batch_size=2, preserve=["square"])
    dirs, result = robust_checkpoints.snapshots(base, [2, 4], tmp_path, settings)
    assert sorted(dirs) == [2, 4]
    short = esd_sdk.erase(base, "circle", robust=True, progress=False, out=tmp_path / "two",
                          **{**settings, "steps": 2})
    final = compute_delta(dict(result.unet.named_parameters()), result.state.original)
    for got, want in ((read_delta(dirs[2])[0], read_delta(tmp_path / "two")[0]), (read_delta(dirs[4])[0], final)):
        assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    two, four = read_delta(dirs[2])[0], final
    assert any(not torch.equal(two[n], four[n]) for n in two)  # the snapshots are not one tensor twice
    assert short.state.losses == result.state.losses[:2]


def test_markdown_marks_the_steps_that_meet_every_goal(robust_checkpoints):
    row = lambda erased, inv, emb, kept: {"erased": erased, "inversion": inv, "embedding": emb,  # noqa: E731
                                          "controls": 1.0, "kept_drop": kept}
    rows = {90: row(0.0, 0.05, 0.0, 0.03), 100: row(0.0, 0.0625, 0.0, 0.0)}
    for r in rows.values():
        r["meets"] = robust_checkpoints.meets(r)
    text = robust_checkpoints.markdown({"seed": 8, "n": 8, "settings": {}, "rows": rows})
    assert "| 90 | 0.0 | 5.0 | 0.0 | 100.0 | 3.0 | yes |" in text
    assert "| 100 | 0.0 | 6.2 | 0.0 | 100.0 | 0.0 | no |" in text


def test_the_tail_mean_is_the_mean_of_the_snapshots(robust_checkpoints, tmp_path):
    from toy_erasure import toy_base

    settings = dict(method="u", seed=3, steps=4, robust_start=0.0, robust_attack_steps=1, robust_images=2, robust_batch=2,
                    batch_size=2)
    dirs, _ = robust_checkpoints.snapshots(toy_base(), [2, 3, 4], tmp_path, settings, average_from=[2, 4])
    assert sorted(map(str, dirs)) == ["2", "3", "4", "mean 2-4", "mean 4-4"]
    weights = lambda d: load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors"))  # noqa: E731
    snap = {k: weights(dirs[k]) for k in (2, 3, 4)}
    mean, last = weights(dirs["mean 2-4"]), weights(dirs["mean 4-4"])
    trained = [n for n in snap[4] if not torch.equal(snap[2][n], snap[4][n])]
    assert trained  # the snapshots differ where the erase trains
    for n in snap[4]:
        torch.testing.assert_close(mean[n], (snap[2][n] + snap[3][n] + snap[4][n]) / 3, rtol=0, atol=1e-6)
        assert torch.equal(last[n], snap[4][n])  # a one-step mean is that step
    assert any(not torch.allclose(mean[n], snap[4][n]) for n in trained)
