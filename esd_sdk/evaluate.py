"""Measure an erase: how often the erased concept still appears, in its own words and in
paraphrases, and how much the concepts to keep suffer — base and edited side by side, same seeds.

    >>> report = evaluate("erased-circle")                      # toy world: the bundled judge
    >>> report.summary()["erased"], report.summary()["max_kept_drop"]
    >>> evaluate("esd-van-gogh", prompts=["vangogh", "artists"], clip_model="models/clip-vit-large")
    >>> sweep("erased-circle", etas=[0.5, 1, 2, 4])             # re-erase at each eta, score, plot

Prompt sets. On the toy world they are built from its vocabulary ("a <colour> <object>",
synonyms as paraphrases, every other object/style as kept). On real models they come from the
paper's CSVs (`esd_sdk.data`: vangogh, artists, imagenette, nudity, or a CSV path): rows whose
concept names an erased concept form the erased set (their synonym rows the paraphrase set),
the other rows the kept set.

Protocol (fixed; every setting is written into eval.json):
- images: ``n`` per prompt; image i of a prompt uses seed ``evaluation_seed + i`` (toy: ``seed + i``),
  identical for the base and the edited model, so their difference is the edit's;
- sampler: the model's own (SD: its scheduler, 50 steps, guidance 7.5; the toy model its
  esd_generation.json), unless ``steps``/``guidance`` override it;
- scorers (`esd_sdk.scorers`): toy judge; CLIP score against the prompt; NudeNet, an image is
  nude when an exposed class scores >= 0.6; ResNet-50 top-1 equal to the row's ImageNet class;
- scorers that name what an image shows (the toy judge, ResNet) also report the share of a row's
  images showing *any* erased concept (``any_erased``). On the kept rows it is the erased concept
  drawn by a prompt that did not ask for it (``kept_shows_erased`` in the summary): an edit whose
  "a cross" draws circles has moved the concept, not removed it. With several concepts in one
  edit the erased rows carry it too: a "circle" prompt that draws an erased triangle passes its
  own row's rate but draws an erased concept all the same;
- the toy judge also tells colours: on the kept rows, the share of images drawn in the colour the
  prompt names (``kept_colour``), so that an edit that keeps a shape but repaints it shows up.

Writes eval.json, eval.md, one grid per prompt set (base row above edited row per prompt) and
eval.html (all of it in one self-contained page, `esd_sdk.report`)
into the output directory, and merges the scores into the artifact's esd.json and model card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .data import PromptRow, concept_matches, load_prompts
from .errors import ConfigError
from .artifact import load_edited_unet, load_manifest, update_manifest
from .generation import GenerationConfig, generate, image_grid
from .loading import BaseModel, load_base, weights_hash
from .report import write_eval_html
from .scorers import NUDENET_THRESHOLD, Scorer, make_scorer

logger = logging.getLogger(__name__)

SETS = ("erased", "paraphrase", "kept")
DEFAULT_SCORER = {"vangogh": "clip", "artists": "clip", "imagenette": "resnet", "nudity": "nudenet"}
GRID_PROMPTS = 16  # prompts shown per grid (the first of each concept first)
GRID_IMAGES = 8  # images per prompt and model in a grid
GRID_PIXELS = 128  # larger images are shrunk to this for the grids


@dataclass
class EvalRow:
    prompt_set: str  # "erased", "paraphrase" or "kept"
    key: str  # the concept
    base: float  # mean score of base-model images (a rate for every scorer but CLIP)
    edited: float  # mean score of edited-model images
    images: int
    # scorers that name what an image shows: the share of images showing *any* erased concept, on kept
    # rows (a kept prompt drawing it) and, with several concepts, erased ones ("circle" drawing an erased triangle)
    any_erased_base: float | None = None
    any_erased: float | None = None
    # scorers that tell colours (the toy judge), on kept rows: the share of images drawn in the colour
    # the prompt names, so that an edit that keeps a shape but repaints it shows up
    colour_base: float | None = None
    colour: float | None = None

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
    protocol: dict = field(default_factory=dict)  # prompt sets and scorer settings
    rows: list[EvalRow] = field(default_factory=list)
    counts: dict = field(default_factory=dict)  # scorer tallies by model, e.g. NudeNet classes

    def summary(self) -> dict:
        def mean(set_name: str, attr: str):
            rows = [r for r in self.rows if r.prompt_set == set_name]
            return float(np.mean([getattr(r, attr) for r in rows])) if rows else None

        kept = [r for r in self.rows if r.prompt_set == "kept"]
        out = {"metric": self.protocol.get("metric", "rate"),
               **{f"{s}{suffix}": mean(s, attr) for s in SETS for suffix, attr in (("", "edited"), ("_base", "base"))},
               "max_kept_drop": float(max(r.drop for r in kept)) if kept else None}
        if any(r.any_erased is not None for r in self.rows if r.prompt_set == "erased"):
            out["any_erased"], out["any_erased_base"] = mean("erased", "any_erased"), mean("erased", "any_erased_base")
        if any(r.any_erased is not None for r in kept):
            out["kept_shows_erased"] = mean("kept", "any_erased")
            out["kept_shows_erased_base"] = mean("kept", "any_erased_base")
        if kept and all(r.colour is not None for r in kept):
            out["kept_colour"], out["kept_colour_base"] = mean("kept", "colour"), mean("kept", "colour_base")
        return out

    def markdown(self) -> str:
        metric = self.protocol.get("metric", "rate")
        pct = self.protocol.get("is_rate", True)
        share = lambda v: f"{100 * v:.1f}%"  # noqa: E731  (a share of images, whatever the metric)
        fmt = share if pct else (lambda v: f"{v:.2f}")  # noqa: E731
        unit = " pts" if pct else ""
        shows = any(r.any_erased is not None for r in self.rows)
        colours = any(r.colour is not None for r in self.rows)
        head = "| set | concept | base | edited | drop | images |"
        head += " any erased concept, base / edited |" if shows else ""
        head += " colour as asked, base / edited |" if colours else ""
        lines = [f"Scores: {metric}.", "", head, "| --- " * (6 + shows + colours) + "|"]
        for r in self.rows:
            drop = 100 * r.drop if pct else r.drop
            line = f"| {r.prompt_set} | {r.key} | {fmt(r.base)} | {fmt(r.edited)} | {drop:+.1f}{unit} | {r.images} |"
            if shows:
                line += f" {fmt(r.any_erased_base)} / {fmt(r.any_erased)} |" if r.any_erased is not None else " |"
            if colours:
                line += f" {share(r.colour_base)} / {share(r.colour)} |" if r.colour is not None else " |"
            lines.append(line)
        summary = self.summary()
        if summary.get("kept_shows_erased") is not None:
            lines.append(f"\nKept prompts drawing an erased concept: {fmt(summary['kept_shows_erased_base'])} base, "
                         f"{fmt(summary['kept_shows_erased'])} edited.")
        if summary.get("kept_colour") is not None:
            lines.append(f"\nKept prompts drawn in the colour they ask for: {share(summary['kept_colour_base'])} base, "
                         f"{share(summary['kept_colour'])} edited.")
        if shows:
            lines.append("\nAny erased concept: the share of images in which the scorer sees any of the erased "
                         "concepts. On a kept row, the erased concept drawn by a prompt that did not ask for it "
                         "(moved, not removed); on an erased row of an edit of several concepts, an erased prompt "
                         "drawing another erased concept (erased in the edited column, but not here).")
        for model, counts in self.counts.items():
            if counts:
                lines.append(f"\n{model}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- prompt sets

def toy_prompt_sets(concepts: list[str], keep: list[str], seed: int = 0) -> dict[str, dict[str, list[PromptRow]]]:
    """Rows by set and concept. Objects: "a <colour> <object>" for every colour; styles:
    "a <style> <colour> <object>" for every object and two colours; paraphrases use the
    concept's synonym; ``keep`` defaults to every other concept of that kind."""
    from .toy.world import COLOUR_NAMES, OBJECTS, STYLES, parse_prompt

    def attribute_rows(concept: str, word_index: int = 0) -> tuple[str, list[PromptRow]]:
        obj, _, style = parse_prompt(concept)
        if obj is not None:
            word = OBJECTS[obj][min(word_index, len(OBJECTS[obj]) - 1)]
            key, prompts = obj, [f"a {c} {word}" for c in COLOUR_NAMES]
        elif style is not None:
            word = STYLES[style][min(word_index, len(STYLES[style]) - 1)]
            key, prompts = style, [f"a {word} {c} {o}" for o in OBJECTS for c in COLOUR_NAMES[:2]]
        else:
            raise ConfigError(f"'{concept}' is not a toy-world object or style; choose from "
                              f"{', '.join(list(OBJECTS) + [s for s in STYLES if s != 'plain'])}")
        return key, [PromptRow(p, seed, key, target=key, paraphrase=word_index > 0) for p in prompts]

    sets: dict[str, dict[str, list[PromptRow]]] = {s: {} for s in SETS}
    for concept in concepts:
        key, rows = attribute_rows(concept)
        sets["erased"][key] = rows
        sets["paraphrase"][key] = attribute_rows(concept, 1)[1]
    if not keep:  # everything of the same kind that was not erased
        erased = set(sets["erased"])
        kind = OBJECTS if erased <= set(OBJECTS) else STYLES
        keep = [k for k in kind if k not in erased and k != "plain"]
    for k in keep:
        key, rows = attribute_rows(k)
        sets["kept"][key] = rows
    return sets


def csv_prompt_sets(names: list[str], concepts: list[str], keep: list[str], seed: int = 0
                    ) -> dict[str, dict[str, list[PromptRow]]]:
    """Rows of the named sets/CSVs by set and concept: rows whose concept names an erased
    concept are "erased" ("paraphrase" for synonym rows), the others "kept" (only those naming
    a ``keep`` concept, when given)."""
    rows = [r for name in names for r in load_prompts(name, seed)]
    sets: dict[str, dict[str, list[PromptRow]]] = {s: {} for s in SETS}
    for r in rows:
        if any(concept_matches(r.concept, c) for c in concepts):
            set_name = "paraphrase" if r.paraphrase else "erased"
        elif r.paraphrase or (keep and not any(concept_matches(r.concept, k) for k in keep)):
            continue
        else:
            set_name = "kept"
        sets[set_name].setdefault(r.concept, []).append(r)
    if not sets["erased"]:
        found = sorted({r.concept for r in rows})
        raise ConfigError(f"no prompt in {', '.join(map(str, names))} is for {', '.join(repr(c) for c in concepts)}; "
                          f"its concepts are {', '.join(found[:12])}: pass --concept naming one of them")
    return sets


# ---------------------------------------------------------------------------- measuring

@dataclass
class Measurement:
    """Scores of one model's images, by set and concept, plus a few images for the grids."""

    values: dict[str, dict[str, list[float]]]
    counts: dict[str, int]
    grid: dict[str, list[tuple[str, np.ndarray]]]  # set -> [(prompt, images)]
    shows_erased: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # as values, when scored
    colour: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # colour as asked, kept rows, when scored


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Images larger than GRID_PIXELS shrunk to it, for the grids."""
    if images.shape[1] <= GRID_PIXELS:
        return images
    pil = [Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)).resize((GRID_PIXELS, GRID_PIXELS), Image.LANCZOS)
           for im in images]
    return np.stack([np.asarray(p, dtype=np.float32) / 255 for p in pil])


def grid_rows(groups: dict[str, list[PromptRow]]) -> list[PromptRow]:
    """The rows shown in a set's grid: the first of each concept, then the next, up to GRID_PROMPTS."""
    order = [r for i in range(max(map(len, groups.values()), default=0)) for g in groups.values() if i < len(g) for r in [g[i]]]
    return order[:GRID_PROMPTS]


def measure(base: BaseModel, sets: dict[str, dict[str, list[PromptRow]]], scorer: Scorer, n: int,
            config: GenerationConfig | None = None, unet=None) -> Measurement:
    """Generate ``n`` images per row (with ``unet`` instead of the base's, if given) and score
    them. Rows sharing a seed are generated in one batched call; images are scored and dropped
    as they come, except those the grids show."""
    values: dict[str, dict[str, list[float]]] = {}
    shows: dict[str, dict[str, list[float]]] = {}
    colour: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, int] = {}
    grid: dict[str, list[tuple[str, np.ndarray]]] = {}
    for set_name, groups in sets.items():
        shown = set(map(id, grid_rows(groups)))
        rows = [r for g in groups.values() for r in g]
        by_seed: dict[int, list[PromptRow]] = {}
        for r in rows:
            by_seed.setdefault(r.seed, []).append(r)
        kept_images: dict[int, np.ndarray] = {}
        values[set_name] = {key: [] for key in groups}
        for seed, batch in by_seed.items():
            images = generate(base, [r.prompt for r in batch], n=n, seed=seed, config=config, unet=unet)
            scores = scorer.score(images, [r for r in batch for _ in range(n)])
            for k, v in scores.counts.items():
                counts[k] = counts.get(k, 0) + v
            for j, r in enumerate(batch):
                values[set_name][r.concept].extend(scores.values[j * n:(j + 1) * n].tolist())
                if scores.shows_erased is not None and (set_name == "kept" or len(scorer.erased_targets) > 1):
                    # (one erased concept: on its own prompts this is their rate again)
                    shows.setdefault(set_name, {}).setdefault(r.concept, []).extend(
                        scores.shows_erased[j * n:(j + 1) * n].tolist())
                if scores.colour_as_asked is not None and set_name == "kept":
                    asked = scores.colour_as_asked[j * n:(j + 1) * n]
                    colour.setdefault(set_name, {}).setdefault(r.concept, []).extend(asked[~np.isnan(asked)].tolist())
                if id(r) in shown:
                    kept_images[id(r)] = thumbnails(images[j * n:j * n + min(n, GRID_IMAGES)])
        grid[set_name] = [(r.prompt, kept_images[id(r)]) for r in grid_rows(groups)]
    return Measurement(values, counts, grid, shows, colour)


def compare(base: Measurement, edited: Measurement) -> list[EvalRow]:
    def mean(values: dict[str, dict[str, list[float]]], s: str, key: str) -> float | None:
        v = values.get(s, {}).get(key)
        return float(np.mean(v)) if v else None

    return [EvalRow(s, key, float(np.mean(base.values[s][key])), float(np.mean(edited.values[s][key])),
                    len(edited.values[s][key]), mean(base.shows_erased, s, key), mean(edited.shows_erased, s, key),
                    mean(base.colour, s, key), mean(edited.colour, s, key))
            for s in SETS if s in edited.values for key in edited.values[s]]


def save_grids(base: Measurement, edited: Measurement, out: Path, title: str) -> None:
    for set_name, shown in edited.grid.items():
        if not shown:
            continue
        cells, labels = [], []
        for (prompt, b), (_, e) in zip(base.grid[set_name], shown):
            cells += [b, e]
            labels += [f"base: {prompt[:60]}", f"edited: {prompt[:60]}"]
        rows_grid(list(zip(labels, cells)), f"{set_name}: base vs edited ({title})").save(out / f"grid_{set_name}.png")


def rows_grid(rows: list[tuple[str, np.ndarray]], title: str) -> Image.Image:
    """One labelled grid row per (label, images); short rows padded white, small images enlarged."""
    k = max(len(images) for _, images in rows)
    cells = [np.concatenate([c, np.ones((k - len(c), *c.shape[1:]), np.float32)]) for _, c in rows]
    scale = max(1, GRID_PIXELS // cells[0].shape[1])
    return image_grid(np.concatenate(cells), columns=k, row_labels=[label for label, _ in rows], scale=scale,
                      title=title)


# ---------------------------------------------------------------------------- evaluate, sweep

def sampler_config(base: BaseModel, steps: int | None, guidance: float | None) -> GenerationConfig:
    """The model's own sampler settings (the protocol), with explicit overrides."""
    config = GenerationConfig.for_model(base)
    config.num_inference_steps = steps or config.num_inference_steps
    config.guidance_scale = config.guidance_scale if guidance is None else guidance
    return config.validate()


@dataclass
class ScoringPlan:
    """What is generated and how it is scored: the base model, the prompt sets and the scorer."""

    base: BaseModel
    sets: dict[str, dict[str, list[PromptRow]]]
    scorer: Scorer
    protocol: dict


def scoring_plan(manifest: dict, base_model: str | BaseModel | None, concepts: list[str] | None,
                 keep: list[str] | None, prompts: list[str] | None, scorer: str | None, seed: int,
                 scorer_options: dict) -> ScoringPlan:
    """The prompt sets and scorer for an erase output (see the module docstring); ``base_model`` is
    a loaded model, a model to load, or None for the manifest's."""
    base = base_model if isinstance(base_model, BaseModel) else load_base(base_model or manifest["base_model"])
    concepts = list(concepts or manifest["concepts"])
    if prompts:
        sets = csv_prompt_sets(list(prompts), concepts, list(keep or []), seed)
        scorer = scorer or DEFAULT_SCORER.get(str(prompts[0]), "clip")
    elif base.family == "toy":
        sets, scorer = toy_prompt_sets(concepts, list(keep or []), seed), scorer or "toy"
    else:
        raise ConfigError("a real model is scored on the paper's prompt sets: pass --prompts "
                          "vangogh|artists|imagenette|nudity (or a CSV), e.g. --prompts vangogh --prompts artists")
    built = make_scorer(scorer, device=base.unet.device, **scorer_options)
    # also count images showing any erased concept: kept prompts drawing it, erased prompts drawing another
    built.erased_targets = frozenset(r.target for g in sets["erased"].values() for r in g)
    protocol = {"prompts": [str(p) for p in prompts] if prompts else "toy world", "concepts": concepts,
                **built.describe(), "is_rate": built.is_rate}
    return ScoringPlan(base, sets, built, protocol)


def evaluate(edited_dir: str | Path, *, base_model: str | BaseModel | None = None, concepts: list[str] | None = None,
             keep: list[str] | None = None, prompts: list[str] | None = None, scorer: str | None = None,
             clip_model: str | Path | None = None, classifier_model: str | Path | None = None,
             nudenet_threshold: float = NUDENET_THRESHOLD, n: int = 8, seed: int = 0,
             output_dir: str | Path | None = None, steps: int | None = None, guidance: float | None = None,
             update: bool = True) -> EvalReport:
    """Score an erase output against its base model (see module docstring).

    Args:
        edited_dir: the directory `esd-sdk erase` wrote.
        base_model: the base model, loaded or to load [the manifest's].
        concepts: the erased concepts to look for [the manifest's].
        keep: concepts that should survive [toy: every other of the same kind; CSVs: every other row].
        prompts: bundled prompt-set names or CSV paths [toy world: built from its vocabulary].
        scorer: `toy`, `clip`, `nudenet` or `resnet` [toy judge; else by the first prompt set].
        clip_model, classifier_model: local transformers directories for the clip/resnet scorers.
        n: images per prompt. seed: the toy world's first seed (CSV rows carry their own).
        output_dir: report directory [``edited_dir/eval``].
        steps, guidance: sampler overrides [the model's own: the protocol].
        update: write the scores into the artifact's esd.json and model card.
    """
    edited_dir = Path(edited_dir)
    manifest = load_manifest(edited_dir)
    options = dict(clip_model=clip_model, classifier_model=classifier_model, nudenet_threshold=nudenet_threshold)
    plan = scoring_plan(manifest, base_model, concepts, keep, prompts, scorer, seed, options)
    config = sampler_config(plan.base, steps, guidance)
    unet = load_edited_unet(edited_dir).to(plan.base.unet.device)
    out = Path(output_dir) if output_dir is not None else edited_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    before = measure(plan.base, plan.sets, plan.scorer, n, config)
    after = measure(plan.base, plan.sets, plan.scorer, n, config, unet=unet)
    report = EvalReport(edited_dir=str(edited_dir), base_model=plan.base.source, n_per_prompt=n, seed=seed,
                        sampler={"scheduler": type(plan.base.pipeline.scheduler).__name__, **asdict(config)},
                        protocol=plan.protocol, rows=compare(before, after),
                        counts={"base": before.counts, "edited": after.counts} if after.counts or before.counts else {})
    save_grids(before, after, out, edited_dir.name)
    (out / "eval.json").write_text(json.dumps({**asdict(report), "summary": report.summary()}, indent=2) + "\n")
    (out / "eval.md").write_text(report.markdown())
    write_eval_html(out, edited_dir)  # after the grids and eval.json: it embeds them
    if update:
        update_manifest(edited_dir, {plan.scorer.name if plan.scorer.name != "toy" else "toy_judge": {
            **report.summary(), "n_per_prompt": n, "seed": seed, "protocol": plan.protocol,
            "rows": [asdict(r) for r in report.rows], **({"counts": report.counts} if report.counts else {})}})
    return report


@dataclass
class SweepReport:
    edited_dir: str
    base_model: str
    erase_config: dict  # the artifact's settings; only negative_guidance varies
    protocol: dict
    n_per_prompt: int
    base: dict  # summary of the base model's scores
    points: list[dict] = field(default_factory=list)  # per eta: summary, rows, erase seconds, weights hash

    def markdown(self) -> str:
        pct = self.protocol.get("is_rate", True)
        fmt = (lambda v: "-" if v is None else f"{100 * v:.1f}%") if pct else (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
        lines = [f"η sweep of {self.edited_dir} ({self.protocol.get('metric')}, {self.n_per_prompt} images per prompt)", "",
                 "| η | erased | paraphrase | kept | max kept drop | erase s |", "| --- | --- | --- | --- | --- | --- |",
                 f"| base | {fmt(self.base['erased_base'])} | {fmt(self.base['paraphrase_base'])} | "
                 f"{fmt(self.base['kept_base'])} | - | - |"]
        for p in self.points:
            s = p["summary"]
            lines.append(f"| {p['eta']:g} | {fmt(s['erased'])} | {fmt(s['paraphrase'])} | {fmt(s['kept'])} | "
                         f"{fmt(s['max_kept_drop'])} | {p['erase_seconds']:.0f} |")
        return "\n".join(lines) + "\n"


def sweep(edited_dir: str | Path, etas: list[float], *, base_model: str | None = None,
          concepts: list[str] | None = None, keep: list[str] | None = None, prompts: list[str] | None = None,
          scorer: str | None = None, clip_model: str | Path | None = None, classifier_model: str | Path | None = None,
          nudenet_threshold: float = NUDENET_THRESHOLD, n: int = 8, seed: int = 0,
          output_dir: str | Path | None = None, steps: int | None = None, guidance: float | None = None,
          device: str | None = None, progress: bool = False) -> SweepReport:
    """Re-run the artifact's erase (its manifest's settings) at each negative guidance η, score
    every result like `evaluate` (the base model's images once), and write sweep.json, sweep.md
    and sweep.png (rates against η, and the erasure/interference trade-off) to ``output_dir``
    [``edited_dir/sweep``]. The artifact itself is not changed."""
    from .config import EraseConfig
    from .training import train

    if not etas or any(not e > 0 for e in etas):
        raise ConfigError(f"η values must be > 0, got {etas}: e.g. --eta 0.5 --eta 1 --eta 2")
    edited_dir = Path(edited_dir)
    manifest = load_manifest(edited_dir)
    erase_config = EraseConfig.from_dict(manifest["config"])
    options = dict(clip_model=clip_model, classifier_model=classifier_model, nudenet_threshold=nudenet_threshold)
    plan = scoring_plan(manifest, base_model, concepts, keep, prompts, scorer, seed, options)
    config = sampler_config(plan.base, steps, guidance)
    out = Path(output_dir) if output_dir is not None else edited_dir / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    before = measure(plan.base, plan.sets, plan.scorer, n, config)
    base_summary = EvalReport("", "", n, seed, {}, plan.protocol, compare(before, before)).summary()
    report = SweepReport(str(edited_dir), plan.base.source, erase_config.to_dict(), plan.protocol, n, base_summary)
    for eta in sorted(etas):  # each erase starts from the base (train() edits a copy)
        state = train(plan.base, replace(erase_config, negative_guidance=float(eta)), device=device, progress=progress)
        after = measure(plan.base, plan.sets, plan.scorer, n, config, unet=state.unet)
        rows = compare(before, after)
        report.points.append({"eta": float(eta), "erase_seconds": round(state.seconds, 1),
                              "edited_hash": weights_hash(state.unet),
                              "summary": EvalReport("", "", n, seed, {}, plan.protocol, rows).summary(),
                              "rows": [asdict(r) for r in rows]})
        logger.info("eta %g: %s", eta, report.points[-1]["summary"])
    (out / "sweep.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out / "sweep.md").write_text(report.markdown())
    plot_sweep(report, out / "sweep.png")
    return report


# ---------------------------------------------------------------------------- plot

def plot_sweep(report: SweepReport, path: str | Path | None = None):
    """Two panels: the erased, paraphrase and kept scores against η (base levels dashed), and
    kept score against erased score, one point per η (the paper's erasure/interference
    trade-off: up and to the left is better). Returns the matplotlib figure; saved to ``path`` if given."""
    from matplotlib.figure import Figure

    from .plots import line_chart

    pct = report.protocol.get("is_rate", True)
    metric = report.protocol.get("metric", "rate")
    names = ("erased", "paraphrase", "kept")
    values = [p["summary"][k] for p in report.points for k in names if p["summary"][k] is not None]
    values += [report.base[f"{k}_base"] for k in names if report.base[f"{k}_base"] is not None]
    y_range = (-0.02, 1.02) if pct else (0.0, max(values + [1e-6]) * 1.1)
    series = {k: [(p["eta"], p["summary"][k]) for p in report.points if p["summary"][k] is not None] for k in names}
    base = {k: report.base[f"{k}_base"] for k in names if report.base[f"{k}_base"] is not None}
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    by_eta, trade_off = fig.subplots(1, 2)
    line_chart({k: v for k, v in series.items() if v}, title="scores against η (dashed: base model)",
               x_label="η (negative guidance)", y_label=metric, y_range=y_range, reference=base, percent=pct, ax=by_eta)
    points = [p for p in report.points if p["summary"]["kept"] is not None and p["summary"]["erased"] is not None]
    trade = {"edited": [(p["summary"]["erased"], p["summary"]["kept"]) for p in points]}
    labels = {"edited": [f"η={p['eta']:g}" for p in points]}
    if "erased" in base and "kept" in base:
        trade["base"] = [(base["erased"], base["kept"])]
        labels["base"] = ["base"]
    line_chart(trade, title="trade-off (up and left is better)", x_label="erased concept score", y_label="kept score",
               y_range=y_range, x_range=y_range, point_labels=labels, percent=pct, ax=trade_off)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
