"""benchmarks/robust_seeds.py: the across-seeds table of plain vs robust ESD reads the per-seed
reports, applies the toy goals at their exact thresholds, and refuses reports of another recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

@pytest.fixture
def robust_seeds(benchmark_module):
    return benchmark_module("robust_seeds")


def _variant(erased, inversion, embedding, kept_drop):
    attack = lambda asr: {"asr": asr, "control": 1.0}  # noqa: E731
    return {"erased": erased, "max_kept_drop": kept_drop,
            "attacks": {"inversion": attack(inversion), "embedding": attack(embedding)}}


def _report(path: Path, seed: int, settings: dict | None = None, preserve=("square",), **variants) -> str:
    path.write_text(json.dumps({"settings": {"seed": seed, **(settings or {})}, "preserve": {"circle": list(preserve)},
                                "rows": [{"concept": "circle", "robust_settings": {}, **variants}]}))
    return path.name


def test_goals_at_their_thresholds_and_pairing(robust_seeds, tmp_path):
    names = [
        _report(tmp_path / "s0.json", 0, plain=_variant(0.0625, 0.69, 0.66, 0.0), robust=_variant(0.0, 0.03125, 0.03125, 0.0)),
        _report(tmp_path / "s1p.json", 1, plain=_variant(0.125, 0.5, 0.6, 0.0)),
        _report(tmp_path / "s1r.json", 1, robust=_variant(0.0, 0.0, 0.0, 0.03125)),  # one kept image lost: a miss
        _report(tmp_path / "s2.json", 2, plain=_variant(0.0, 0.2, 0.2, 0.0), robust=_variant(0.03125, 0.0, 0.3, 0.0)),
    ]
    (tmp_path / "sources.txt").write_text("# comment\n" + "\n".join(names) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert recipes == {"plain": {}, "robust": robust_seeds.ROBUST_KEYS, "preserve": ["square"]} and sorted(seeds) == [0, 1, 2] and set(seeds[1]) == {"plain", "robust"}
    s = robust_seeds.summary(seeds)
    assert s["met"] == 1 and s["met_each"] == {"asr": 2, "erased": 2, "kept": 2}
    assert s["attack_free"] == {"plain": 1, "robust": 1} and s["plain_seeds"] == 3  # seed 2 plain and seed 0 robust: 0.0%, 0 pts
    assert s["robust_lower_both_attacks"] == 2  # seed 2's embedding ASR rose
    lo, hi = s["met_interval"]
    assert 0.0 < lo < 1 / 3 < hi < 1.0
    assert s["mean_over_paired_seeds"]["robust"]["inversion"] == pytest.approx(0.03125 / 3)
    text = robust_seeds.markdown(seeds, s)
    assert "| 0 | 6.2% / 69.0% / 66.0% / 0.0 pts | 0.0% / 3.1% / 3.1% / 0.0 pts | **yes** | yes |" in text
    assert "| 1 |" in text and "**1 of 3**" in text
    assert "together: robust ESD at 1 of 3, plain ESD at 1 of 3." in text


def test_the_recipe_comes_from_the_recorded_config(robust_seeds, tmp_path):
    """A report records the config the robust erase ran: the recipe reads it, so a run at a later
    default (no --set) is told apart from one at an earlier default."""
    robust = {**_variant(0, 0, 0, 0), "config": {"robust_start": 0.5, "robust_attack_steps": 10, "lr": 2e-4}}
    name = _report(tmp_path / "r.json", 0, robust=robust)
    (tmp_path / "sources.txt").write_text(name + "\n")
    _, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    recipe = recipes["robust"]
    assert recipe == {**robust_seeds.ROBUST_KEYS, "robust_start": 0.5}
    assert robust_seeds.describe({**recipe, "robust_batch": 4}) == "1 x 10 from 0.5 of the steps, robust_batch=4"


def test_one_plain_recipe_across_the_rows(robust_seeds, tmp_path):
    """Plain rows of another method or setting are tabulated (and named) when all share it; a mix is refused."""
    names = [_report(tmp_path / "a.json", 0, plain=_variant(0.0, 0.5, 0.5, 0.0), robust=_variant(0, 0, 0, 0)),
             _report(tmp_path / "b.json", 1, plain=_variant(0.1, 0.4, 0.5, 0.0), robust=_variant(0, 0.1, 0, 0))]
    for name in names:  # both erases of ESD-all
        data = json.loads((tmp_path / name).read_text())
        data["rows"][0]["method"] = "all"
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert recipes["plain"] == {"method": "all"} and recipes["robust"]["method"] == "all"
    text = robust_seeds.markdown(seeds, robust_seeds.summary(seeds), recipes)
    assert text.startswith('ESD-all "circle" --preserve square on the toy, toy defaults; robust 1 x 10 from 0 of the steps.')
    names.append(_report(tmp_path / "lr.json", 3, settings={"lr": 3e-4}, plain=_variant(0.0, 0.5, 0.5, 0.0)))
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(SystemExit, match="plain ESD toy defaults, lr=0.0003, but an earlier line had toy defaults"):
        robust_seeds.collect(tmp_path / "sources.txt")


def test_one_robust_recipe_across_the_rows(robust_seeds, tmp_path):
    """Robust rows of another recipe are tabulated when all share it (plain ESD ignores robust_*
    overrides, so a plain row from the same run still counts as the default); two recipes are refused."""
    start = {"robust_start": 0.5}
    names = [_report(tmp_path / "a.json", 0, settings=start, plain=_variant(0.1, 0.5, 0.5, 0.0), robust=_variant(0, 0, 0, 0)),
             _report(tmp_path / "b.json", 1, settings=start, robust=_variant(0.0, 0.1, 0.0, 0.0))]
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert recipes["robust"]["robust_start"] == 0.5 and set(seeds[0]) == {"plain", "robust"}
    assert "robust 1 x 10 from 0.5 of the steps." in robust_seeds.markdown(seeds, robust_seeds.summary(seeds), recipes)
    names.append(_report(tmp_path / "c.json", 2, plain=_variant(0.2, 0.6, 0.6, 0.0), robust=_variant(0, 0, 0, 0)))
    (tmp_path / "sources.txt").write_text("\n".join(names[:2] + [names[2] + " plain"]) + "\n")  # its plain row only
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert recipes["robust"]["robust_start"] == 0.5 and set(seeds[2]) == {"plain"} and seeds[2]["plain"]["erased"] == 0.2
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")  # its default robust row as well
    with pytest.raises(SystemExit, match="list one robust recipe"):
        robust_seeds.collect(tmp_path / "sources.txt")
    (tmp_path / "sources.txt").write_text(names[2] + " both\n")
    with pytest.raises(SystemExit, match="name one variant to take from it"):
        robust_seeds.collect(tmp_path / "sources.txt")


def test_one_preserve_list_across_the_rows(robust_seeds, tmp_path):
    """Reports that preserve more than the square are tabulated (and named) when all preserve the
    same prompts; a mix, or a list without the square, is refused."""
    three = ("square", "triangle", "cross")
    names = [_report(tmp_path / "a.json", 0, preserve=three, plain=_variant(0.0, 0.5, 0.5, 0.0), robust=_variant(0, 0, 0, 0)),
             _report(tmp_path / "b.json", 1, preserve=three, robust=_variant(0.0, 0.1, 0.0, 0.0))]
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert recipes["preserve"] == list(three)
    assert robust_seeds.markdown(seeds, robust_seeds.summary(seeds), recipes).startswith(
        'ESD-u "circle" --preserve square triangle cross on the toy')
    (tmp_path / "sources.txt").write_text("\n".join(names + [_report(tmp_path / "c.json", 2, robust=_variant(0, 0, 0, 0))]) + "\n")
    with pytest.raises(SystemExit, match="preserves square, but an earlier line preserved square triangle cross"):
        robust_seeds.collect(tmp_path / "sources.txt")
    (tmp_path / "sources.txt").write_text(_report(tmp_path / "d.json", 3, preserve=("triangle",), robust=_variant(0, 0, 0, 0)) + "\n")
    with pytest.raises(SystemExit, match="not the square for the circle"):
        robust_seeds.collect(tmp_path / "sources.txt")
    # robust rows alone (no plain row to pair with): the method is theirs, and no comparison is claimed
    data = json.loads((tmp_path / names[1]).read_text())
    data["rows"][0]["method"] = "all"
    (tmp_path / names[1]).write_text(json.dumps(data))
    (tmp_path / "sources.txt").write_text(names[1] + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    text = robust_seeds.markdown(seeds, robust_seeds.summary(seeds), recipes)
    assert text.startswith('ESD-all "circle" --preserve square triangle cross on the toy, toy defaults; robust 1 x 10 from 0 of the steps.')
    assert "No plain ESD rows to compare with." in text and "below plain" not in text.split("\n\n")[-1]
    assert "| mean of 1 | n/a | 0.0% / 10.0% / 0.0% / 0.0 pts | | |" in text  # the robust rows' own mean


def test_timing_variants_take_json_lists(benchmark_module):
    """robust_toy --timing: a ,KEY=VALUE override may be a JSON list whose items hold commas."""
    robust_toy = benchmark_module("robust_toy")
    name, settings = robust_toy.timing_spec('1x10@0.5,robust_templates=["a red {}", "a green, bright {}"],robust_images=4')
    assert settings == {"robust": True, "robust_every": 1, "robust_attack_steps": 10, "robust_start": 0.5,
                        "robust_templates": ["a red {}", "a green, bright {}"], "robust_images": 4}
    assert robust_toy.timing_spec("1x5,method=all")[1]["method"] == "all"


@pytest.fixture
def rescore_seeds(benchmark_module):
    return benchmark_module("rescore_seeds")


def _scored_again(path: Path, erased: float, inversion: float, embedding: float, kept_drop: float) -> str:
    """An `esd-sdk eval --attack inversion --attack embedding` output directory, 128 images a rate."""
    (path / "attack").mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps({"seed": 1000, "summary": {"erased": erased, "max_kept_drop": kept_drop},
                                                "rows": [{"prompt_set": "erased", "images": 128}]}))
    (path / "attack" / "attack.json").write_text(json.dumps({"results": [
        {"attack": "inversion", "asr": inversion, "control": 1.0}, {"attack": "embedding", "asr": embedding, "control": 0.96875}]}))
    return path.name


def test_rescored_goals_read_at_128_images(rescore_seeds, tmp_path):
    """At 128 images the goals allow 6, 2 and 3 images (one more fails each); the first scoring's
    row comes from its robust_toy report, and the summary counts both."""
    i = 1 / 128
    rows = [
        (0, _scored_again(tmp_path / "e0", 2 * i, 6 * i, 0.0, 3 * i), _report(tmp_path / "s0.json", 0, robust=_variant(0.03125, 0.0, 0.0, 0.0))),
        (1, _scored_again(tmp_path / "e1", 3 * i, 0.0, 0.0, 0.0), _report(tmp_path / "s1.json", 1, robust=_variant(0.0, 0.0, 0.0, 0.0))),
        (2, _scored_again(tmp_path / "e2", 0.0, 7 * i, 0.0, 0.0), None),
        (3, _scored_again(tmp_path / "e3", 0.0, 0.0, 0.0, 4 * i), None),
    ]
    sources = tmp_path / "sources.txt"
    sources.write_text("# seed, eval dir, report\n" + "\n".join(f"{s} {e} {r or ''}" for s, e, r in rows) + "\n")
    seeds = rescore_seeds.collect(sources)
    s = rescore_seeds.summary(seeds)
    assert s["rescored"]["met"] == 1 and s["rescored"]["met_each"] == {"asr": 3, "erased": 3, "kept": 3}
    assert s["first"]["met"] == 1 and s["first"]["of"] == 2 and s["rescored"]["min_control"] == 0.96875
    text = rescore_seeds.markdown(seeds, s)
    assert "| 0 | 3.1% / 0.0% / 0.0% / 0.0 pts | no | 1.6% / 4.7% / 0.0% / 2.3 pts | **yes** |" in text
    assert "| 2 | n/a |  | 0.0% / 5.5% / 0.0% / 0.0 pts | no |" in text
    assert "128 images a rate" in text and "Scored again the edits meet every goal at **1 of 4**" in text


def test_rescore_needs_both_attacks(rescore_seeds, tmp_path):
    _scored_again(tmp_path / "e0", 0.0, 0.0, 0.0, 0.0)
    attack = tmp_path / "e0" / "attack" / "attack.json"
    attack.write_text(json.dumps({"results": [{"attack": "inversion", "asr": 0.0, "control": 1.0}]}))
    (tmp_path / "sources.txt").write_text("0 e0\n")
    with pytest.raises(SystemExit, match="no embedding attack in attack/attack.json: score it with --attack inversion"):
        rescore_seeds.collect(tmp_path / "sources.txt")


def test_kept_colours_beside_the_goals(robust_seeds, tmp_path):
    """Reports that scored colours give their means (base and edited, per variant) under the table;
    older reports without them are left out of the mean, not counted as 0; none at all: no line."""
    coloured = lambda v, edited: {**v, "kept_colour": edited, "kept_colour_base": 1.0}  # noqa: E731
    names = [_report(tmp_path / "a.json", 0, plain=coloured(_variant(0.1, 0.5, 0.5, 0.0), 0.9),
                     robust=coloured(_variant(0, 0, 0, 0), 0.75)),
             _report(tmp_path / "b.json", 1, plain=_variant(0.1, 0.4, 0.5, 0.0),
                     robust=coloured(_variant(0, 0.1, 0, 0), 0.5))]
    (tmp_path / "sources.txt").write_text("\n".join(names) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    s = robust_seeds.summary(seeds)
    assert s["kept_colour"]["robust"] == {"edited": pytest.approx(0.625), "base": 1.0, "seeds": 2}
    assert s["kept_colour"]["plain"] == {"edited": pytest.approx(0.9), "base": 1.0, "seeds": 1}
    text = robust_seeds.markdown(seeds, s, recipes)
    assert ("base / edited: plain ESD 100.0% / 90.0% (mean of 1 seeds), robust ESD 100.0% / 62.5% (mean of 2 seeds)."
            in text)
    (tmp_path / "sources.txt").write_text(_report(tmp_path / "c.json", 2, robust=_variant(0, 0, 0, 0)) + "\n")
    seeds, recipes = robust_seeds.collect(tmp_path / "sources.txt")
    assert "colour" not in robust_seeds.markdown(seeds, robust_seeds.summary(seeds), recipes)
