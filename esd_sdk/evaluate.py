"""Measure an erase: how often the erased concept still appears, in its own words and in
paraphrases, and how much the concepts to keep suffer — base and edited side by side, same seeds.

    >>> report = evaluate("erased-circle", concepts=["circle"], keep=["square", "triangle"])
    >>> report.rows[0]            # EvalRow(prompt_set='erased', key='circle', base=1.0, edited=0.0, ...)

On the toy world the judge scores images; the prompt sets are built from the world's
vocabulary (colours x objects, synonyms as paraphrases). Writes eval.json, eval.md and one grid
per prompt set (base row above edited row per prompt) into the output directory, and merges the
scores into the artifact's esd.json and model card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, UnsupportedModelError
from .fold import load_edited_unet, load_manifest, update_manifest
from .generate import GenerationConfig, generate, image_grid
from .loading import load_base

logger = logging.getLogger(__name__)


@dataclass
class EvalRow:
    prompt_set: str  # "erased", "paraphrase" or "kept"
    key: str  # the concept
    base: float  # rate in base-model images
    edited: float  # rate in edited-model images
    images: int

    @property
    def drop(self) -> float:
        return self.base - self.edited


@dataclass
class EvalReport:
    edited_dir: str
    base_model: str
    n_per_prompt: int
    seed: int
    sampler: dict
    rows: list[EvalRow] = field(default_factory=list)

    def summary(self) -> dict:
        by = lambda s: [r for r in self.rows if r.prompt_set == s]  # noqa: E731
        kept = by("kept")
        return {
            "erased_rate": float(np.mean([r.edited for r in by("erased")])) if by("erased") else None,
            "erased_rate_base": float(np.mean([r.base for r in by("erased")])) if by("erased") else None,
            "paraphrase_rate": float(np.mean([r.edited for r in by("paraphrase")])) if by("paraphrase") else None,
            "kept_rate": float(np.mean([r.edited for r in kept])) if kept else None,
            "max_kept_drop": float(max(r.drop for r in kept)) if kept else None,
        }

    def markdown(self) -> str:
        lines = ["| set | concept | base | edited | drop | images |", "| --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r.prompt_set} | {r.key} | {100 * r.base:.1f}% | {100 * r.edited:.1f}% | "
                         f"{100 * r.drop:+.1f} pts | {r.images} |")
        return "\n".join(lines) + "\n"


def toy_prompt_sets(concepts: list[str], keep: list[str]) -> dict[str, dict[str, list[str]]]:
    """Prompts by set ("erased", "paraphrase", "kept") and concept. Objects: "a <colour> <object>"
    for every colour; styles: "a <style> <colour> <object>" for every object and two colours;
    paraphrases use the concept's synonym; ``keep`` defaults to every other concept of that kind."""
    from .toy.world import COLOUR_NAMES, OBJECTS, STYLES, parse_prompt

    def attribute_prompts(concept: str, word_index: int = 0) -> tuple[str, list[str]]:
        obj, _, style = parse_prompt(concept)
        if obj is not None:
            word = OBJECTS[obj][min(word_index, len(OBJECTS[obj]) - 1)]
            return obj, [f"a {c} {word}" for c in COLOUR_NAMES]
        if style is not None:
            word = STYLES[style][min(word_index, len(STYLES[style]) - 1)]
            return style, [f"a {word} {c} {o}" for o in OBJECTS for c in COLOUR_NAMES[:2]]
        raise ConfigError(f"'{concept}' is not a toy-world object or style; choose from "
                          f"{', '.join(list(OBJECTS) + [s for s in STYLES if s != 'plain'])}")

    sets: dict[str, dict[str, list[str]]] = {"erased": {}, "paraphrase": {}, "kept": {}}
    for concept in concepts:
        key, prompts = attribute_prompts(concept)
        sets["erased"][key] = prompts
        sets["paraphrase"][key] = attribute_prompts(concept, 1)[1]
    if not keep:  # everything of the same kind that was not erased
        erased = set(sets["erased"])
        kind = OBJECTS if set(erased) <= set(OBJECTS) else STYLES
        keep = [k for k in kind if k not in erased and k != "plain"]
    for k in keep:
        key, prompts = attribute_prompts(k)
        sets["kept"][key] = prompts
    return sets


def evaluate(edited_dir: str | Path, *, base_model: str | None = None, concepts: list[str] | None = None,
             keep: list[str] | None = None, n: int = 8, seed: int = 0, output_dir: str | Path | None = None,
             config: GenerationConfig | None = None, update: bool = True) -> EvalReport:
    """Score an erase output against its base model (see module docstring)."""
    from .toy import load_judge, prompt_rates
    from .toy.world import parse_prompt

    edited_dir = Path(edited_dir)
    manifest = load_manifest(edited_dir)
    base = load_base(base_model or manifest["base_model"])
    if base.family != "toy":
        raise UnsupportedModelError("scoring needs a judge: only the toy world's is bundled so far; "
                                    "evaluate toy-world edits, or score real-model images with your own classifier")
    concepts = concepts or manifest["concepts"]
    sets = toy_prompt_sets(concepts, keep or [])
    config = config or GenerationConfig.for_model(base)
    unet = load_edited_unet(edited_dir)
    judge = load_judge()
    report = EvalReport(edited_dir=str(edited_dir), base_model=base.source, n_per_prompt=n, seed=seed,
                        sampler={"scheduler": type(base.pipeline.scheduler).__name__, **asdict(config)})
    out = Path(output_dir) if output_dir is not None else edited_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for set_name, groups in sets.items():
        prompts = [p for group in groups.values() for p in group]
        images = {name: generate(base, prompts, n=n, seed=seed, config=config, unet=u)
                  for name, u in (("base", None), ("edited", unet))}
        i = 0
        for key, group in groups.items():
            rates = {name: [] for name in images}
            for prompt in group:
                obj, _, style = parse_prompt(prompt)
                attribute = "object" if obj is not None else "style"
                for name, imgs in images.items():
                    rates[name].append(prompt_rates(judge, imgs[i * n:(i + 1) * n], prompt)[attribute])
                i += 1
            report.rows.append(EvalRow(set_name, key, float(np.mean(rates["base"])), float(np.mean(rates["edited"])),
                                       n * len(group)))
        # grid: for each prompt, its base images then its edited images (first 8 of each)
        k = min(n, 8)
        cells, row_labels = [], []
        for j, prompt in enumerate(prompts):
            for name in ("base", "edited"):
                cells.append(images[name][j * n:j * n + k])
                row_labels.append(f"{name}: {prompt}")
        image_grid(np.concatenate(cells), columns=k, row_labels=row_labels,
                   title=f"{set_name}: base vs edited ({edited_dir.name})").save(out / f"grid_{set_name}.png")
    (out / "eval.json").write_text(json.dumps({**asdict(report), "summary": report.summary()}, indent=2) + "\n")
    (out / "eval.md").write_text(report.markdown())
    if update:
        update_manifest(edited_dir, {"toy_judge": {**report.summary(), "n_per_prompt": n, "seed": seed,
                                                   "rows": [asdict(r) for r in report.rows]}})
    return report
