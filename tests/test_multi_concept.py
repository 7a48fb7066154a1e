"""Many concepts in one edit: every concept every step, memory flat in their number, lists from files."""

import csv
import json
import weakref
from importlib import resources

import pytest
import torch
from click.testing import CliRunner

from esd_sdk import load_base
from esd_sdk.cli import cli
from esd_sdk.config import EraseConfig, read_concepts
from esd_sdk.errors import ConfigError
from esd_sdk.training import _Trainer

TINY = dict(method="x", steps=1, lr=1e-3, ddim_steps=1)  # t_enc = 0: no sampling calls


def _artist_prompts(n: int) -> list[str]:
    """``n`` distinct prompts of the bundled artists set (it names 5 artists in 100 prompts)."""
    path = resources.files("esd_sdk") / "data" / "prompts" / "artists.csv"
    rows = list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))
    prompts = list(dict.fromkeys(r["prompt"].strip() for r in rows))
    assert len(prompts) >= n
    return prompts[:n]


class _SavedForBackward:
    """Peak bytes of activations autograd holds at once, and the largest UNet batch."""

    def __init__(self, unet: torch.nn.Module):
        self.live = self.peak = self.max_batch = 0
        unet.register_forward_pre_hook(lambda module, args: self._batch(args[0]))

    def _batch(self, x: torch.Tensor) -> None:
        self.max_batch = max(self.max_batch, x.shape[0])

    def _release(self, size: int) -> None:
        self.live -= size

    def pack(self, t: torch.Tensor) -> "_Saved":
        holder = _Saved(t)  # freed with the graph that holds it
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, size)
        return holder

    @staticmethod
    def unpack(holder: "_Saved") -> torch.Tensor:
        return holder.tensor


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def _peak_step(tiny_sd, concepts: list[str]) -> tuple[int, int, _Trainer]:
    base = load_base(tiny_sd)
    trainer = _Trainer(base, base.unet, EraseConfig(concepts=concepts, preserve=["a square"], **TINY),
                       torch.device("cpu"), None)
    meter = _SavedForBackward(trainer.unet)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        trainer.train_step()
    return meter.peak, meter.max_batch, trainer


def test_fifty_concepts_memory_is_flat(tiny_sd):
    """Each concept's graph is freed before the next one runs, and no call batches the concepts
    together: 50 concepts hold exactly the activations of 2, and every one of them trains."""
    peak_2, batch_2, _ = _peak_step(tiny_sd, _artist_prompts(2))
    peak_50, batch_50, trainer = _peak_step(tiny_sd, _artist_prompts(50))
    assert peak_2 > 0 and peak_50 == peak_2
    assert batch_50 == batch_2 == 3  # the frozen call: uncond, concept, one preserved prompt
    assert trainer.trajectories == {} and len(trainer.losses) == 1 and trainer.step == 1


def test_concepts_file_lists_every_concept_in_the_manifest(tiny_sd, tmp_path):
    concepts = _artist_prompts(50)
    listed = tmp_path / "artists.txt"
    listed.write_text("# fifty prompts of the bundled artists set\n\n" + "\n".join(concepts) + "\n")
    out = tmp_path / "edit"
    result = CliRunner().invoke(cli, ["erase", "--model", str(tiny_sd), "--concepts-file", str(listed), "--out", str(out),
                                      "--method", "x", "--steps", "1", "--ddim-steps", "1", "--lr", "1e-3", "-q"])
    assert result.exit_code == 0, result.output
    assert "and 45 more" in result.output
    manifest = json.loads((out / "esd.json").read_text())
    assert manifest["concepts"] == concepts and manifest["config"]["concepts"] == concepts
    assert manifest["training"]["processes"] == 1 and manifest["training"]["global_batch"] == 1
    card = (out / "README.md").read_text()
    assert all(json.dumps(c) in card for c in concepts)


def test_read_concepts(tmp_path):
    bundled = resources.files("esd_sdk") / "data" / "prompts" / "artists.csv"
    assert read_concepts(bundled) == ["Tyler Edlin", "Thomas Kinkade", "Kilian Eng", "Kelly McKernan", "Ajin: Demi Human"]
    (tmp_path / "list.txt").write_text("circle\n  # a comment\n\n square \n")
    assert read_concepts(tmp_path / "list.txt") == ["circle", "square"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="lists no concepts"):
        read_concepts(tmp_path / "empty.txt")
    (tmp_path / "bad.csv").write_text("prompt,seed\na cat,1\n")
    with pytest.raises(ConfigError, match="no 'concept' column"):
        read_concepts(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match="listed twice"):
        EraseConfig(concepts=["circle", "square", "circle"]).validate()


def test_cli_needs_a_concept(tiny_sd, tmp_path):
    result = CliRunner().invoke(cli, ["erase", "--model", str(tiny_sd), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--concepts-file" in result.output
    assert not (tmp_path / "x").exists()


def test_default_steps_grow_with_the_number_of_concepts():
    # ceil(sqrt(N)) times one concept's steps, unless the caller sets --steps
    assert EraseConfig.for_model("toy", "circle", method="x").steps == 100
    assert EraseConfig.for_model("toy", ["circle", "square"], method="x").steps == 200
    assert EraseConfig.for_model("toy", ["circle", "square", "triangle", "cross", "plain"], method="u").steps == 300
    assert EraseConfig.for_model("sd1", [f"artist {i}" for i in range(50)], method="x").steps == 8000
    assert EraseConfig.for_model("toy", ["circle", "square"], method="x", steps=7).steps == 7


def test_eval_reports_any_erased_concept_for_a_multi_concept_edit(tmp_path):
    """On an edit of one tiny step the erased prompts still draw their own objects, so the share
    showing any erased concept reads ~100% for each, while the kept prompts (their own objects)
    read ~0%; a one-concept eval of the same edit reports no such column."""
    from esd_sdk import erase
    from esd_sdk.evaluate import evaluate

    base = load_base("toy")
    out = tmp_path / "edit"
    erase(base, ["circle", "square"], method="x", out=out, steps=1, lr=1e-6, ddim_steps=2, progress=False)
    report = evaluate(out, n=2, base_model=base, update=False)
    erased = [r for r in report.rows if r.prompt_set == "erased"]
    kept = [r for r in report.rows if r.prompt_set == "kept"]
    assert {r.key for r in erased} == {"circle", "square"}
    assert all(r.any_erased >= 0.85 and r.any_erased_base >= 0.85 for r in erased), erased
    assert kept and all(r.any_erased <= 0.15 for r in kept), kept
    assert report.summary()["any_erased"] >= 0.85
    assert "any erased concept" in (out / "eval" / "eval.md").read_text()
    assert "<em>any</em> erased concept" in (out / "eval" / "eval.html").read_text()
    single = evaluate(out, n=1, base_model=base, concepts=["circle"], update=False, output_dir=tmp_path / "one")
    # one concept: on its own prompts the share is their rate again, so only the kept rows carry it
    assert all(r.any_erased is None for r in single.rows if r.prompt_set != "kept") and "any_erased" not in single.summary()
    assert all(r.any_erased is not None for r in single.rows if r.prompt_set == "kept") and "kept_shows_erased" in single.summary()


def test_eval_counts_kept_prompts_that_draw_the_erased_concept(tmp_path):
    """A one-concept edit too: kept prompts whose images show the erased concept are counted. A kept
    "a red circle" names no style and the toy draws some of them striped (3 of 16 here), so a barely
    edited "striped" erase shows the style under a prompt that did not ask for it; a kept "dotted"
    prompt draws dots, never stripes. The count must see the first and not the second."""
    from esd_sdk import erase
    from esd_sdk.evaluate import evaluate

    base = load_base("toy")
    out = tmp_path / "edit"
    erase(base, "striped", method="x", out=out, steps=1, lr=1e-6, ddim_steps=2, progress=False)
    report = evaluate(out, n=4, base_model=base, keep=["circle", "dotted"], update=False)
    kept = {r.key: r for r in report.rows if r.prompt_set == "kept"}
    assert kept["circle"].any_erased_base >= 0.1 and kept["circle"].any_erased >= 0.1, kept
    assert kept["dotted"].any_erased_base <= 0.05 and kept["dotted"].any_erased <= 0.05, kept
    s = report.summary()
    assert s["kept_shows_erased"] == pytest.approx((kept["circle"].any_erased + kept["dotted"].any_erased) / 2)
    assert s["kept_shows_erased_base"] >= 0.05
    assert "Kept prompts drawing an erased concept" in (out / "eval" / "eval.md").read_text()
    assert "Kept prompts whose images show an erased concept" in (out / "eval" / "eval.html").read_text()
    # the toy judge tells colours too: the kept prompts' images in the colour they ask for, base and edited
    assert all(r.colour is not None and r.colour_base is not None for r in kept.values())
    assert all(r.colour is None for r in report.rows if r.prompt_set != "kept")
    assert s["kept_colour"] == pytest.approx((kept["circle"].colour + kept["dotted"].colour) / 2)
    assert s["kept_colour_base"] >= 0.8  # the toy draws the colour it is asked for
    assert "Kept prompts drawn in the colour they ask for" in (out / "eval" / "eval.md").read_text()
    html = (out / "eval" / "eval.html").read_text()
    assert "Kept prompts drawn in the colour they ask for" in html and "colour as asked, base / edited" in html
    assert "colour as asked, base / edited" in (out / "eval" / "eval.md").read_text()
