"""What a reviewer reads about an erase: a short summary of its manifest (shown by the review
page of ``esd-sdk serve --compare``) and ``eval.html``, the evaluation as one self-contained page.

    >>> manifest_summary(load_manifest("erased-circle"))   # concepts, method, η, eval scores, attack success rates
    >>> write_eval_html("erased-circle/eval")              # what `esd-sdk eval` writes next to eval.json

eval.html embeds everything it shows (grids and charts as base64 PNG, styles inline, no script),
so it opens from disk with no server and can be attached to a ticket or a model review as one
file: the summary table, a chart of base vs edited scores, the base-vs-edited grids per prompt
set, the attack success rates when `esd-sdk attack` has run, and the η-sweep plot when
`esd-sdk sweep` has written one into the erase output (EDITED/sweep/sweep.json).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
from pathlib import Path

from .errors import ModelNotFoundError
from .files import write_text

SETS = ("erased", "paraphrase", "kept")
REPORT_NAME = "eval.html"


def manifest_summary(manifest: dict) -> dict:
    """The facts a reviewer needs from an erase's manifest (``esd.json``): what was erased and
    how, its evaluation scores by scorer (``scores``) and its attack success rates (``attacks``,
    once `esd-sdk attack` or `esd-sdk eval --attack` has run). Missing parts are left out."""
    config = manifest.get("config", {})
    scores = manifest.get("scores", {})
    summary = {"base_model": manifest.get("base_model"), "concepts": manifest.get("concepts", []),
               "method": manifest.get("method"), "eta": config.get("negative_guidance"),
               "steps": config.get("steps"), "robust": bool(config.get("robust", False)),
               "preserve": config.get("preserve", [])}
    evals = {name: {k: s.get(k) for k in ("metric", "erased", "erased_base", "paraphrase", "paraphrase_base", "kept",
                                          "kept_base", "max_kept_drop", "n_per_prompt")}
             | {k: s[k] for k in ("kept_shows_erased", "kept_shows_erased_base", "kept_colour", "kept_colour_base")
                if k in s}
             | {"is_rate": s.get("protocol", {}).get("is_rate", True)}
             for name, s in scores.items() if isinstance(s, dict) and "erased" in s}
    if evals:
        summary["scores"] = evals
    attack = scores.get("attack", {})
    if attack.get("summary"):
        summary["attacks"] = {name: {k: s.get(k) for k in ("asr", "plain", "control", "control_ok")}
                              for name, s in attack["summary"].items()}
        summary["attack_metric"] = attack.get("protocol", {}).get("metric")
    return summary


def review_prompts(manifest: dict) -> list[dict[str, str]]:
    """Prompts to try an erase with, the way `esd-sdk eval` does: the erased concept, a
    paraphrase of it, and a concept that should be kept, as ``[{"label", "prompt"}]``. The toy
    world's come from its vocabulary, a real model's from the bundled prompt sets that name the
    concept (the nudity set is left out: the review page shows its prompts as buttons); where no
    set names it, the concept itself is the only preset."""
    from .errors import ConfigError
    from .evaluate import csv_prompt_sets, toy_prompt_sets

    concepts = list(manifest.get("concepts") or [])
    if not concepts:
        return []
    sets = None
    if manifest.get("base_family") == "toy":
        sets = toy_prompt_sets(concepts, [])
    else:
        names = ["vangogh", "artists", "imagenette"]
        for name in names:  # a kept concept from the same set if it has one (church: cassette player), else any
            with contextlib.suppress(ConfigError):
                sets = csv_prompt_sets([name], concepts, [])
                sets = sets if sets["kept"] else csv_prompt_sets(names, concepts, [])
                break
    if sets is None:
        return [{"label": "erased", "prompt": concepts[0]}]
    return [{"label": label, "prompt": next(iter(sets[label].values()))[0].prompt}
            for label in SETS if sets.get(label)]


# ---------------------------------------------------------------------------- eval.html

def _png_data(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _value(v, pct: bool) -> str:
    return "–" if v is None else f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _scores_chart(rows: list[dict], metric: str, pct: bool) -> bytes:
    """Base vs edited score of every concept, grouped by prompt set (one matplotlib panel per set)."""
    from .plots import bar_chart, figure_bytes

    panels = {}
    for r in rows:
        panels.setdefault(r["prompt_set"], {})[r["key"]] = {"base": (r["base"], None), "edited": (r["edited"], None)}
    fig = bar_chart(panels, title=f"{metric}: base vs edited, same seeds", panel_size=(3.2, 2.6))
    if pct:
        for ax in fig.axes:
            ax.set_ylim(0, 1.15)
    return figure_bytes(fig)


def _sweep_chart(sweep_json: Path) -> bytes:
    from .evaluate import SweepReport, plot_sweep
    from .plots import figure_bytes

    return figure_bytes(plot_sweep(SweepReport(**json.loads(sweep_json.read_text()))))


def eval_html(eval_dir: str | Path, edited_dir: str | Path | None = None) -> str:
    """The evaluation in ``eval_dir`` (eval.json and grid_*.png, as `esd_sdk.evaluate` writes them)
    as one HTML page. ``edited_dir`` (default: the one eval.json names) supplies the manifest's
    summary and, when it holds one, the η sweep (``sweep/sweep.json``)."""
    eval_dir = Path(eval_dir)
    if not (eval_dir / "eval.json").is_file():
        raise ModelNotFoundError(f"{eval_dir} has no eval.json: run `esd-sdk eval EDITED` first")
    report = json.loads((eval_dir / "eval.json").read_text())
    edited_dir = Path(edited_dir or report["edited_dir"])
    manifest_path = edited_dir / "esd.json"
    info = manifest_summary(json.loads(manifest_path.read_text())) if manifest_path.is_file() else {}
    pct = report["protocol"].get("is_rate", True)
    metric = report["protocol"].get("metric", "rate")
    e = html.escape

    facts = [("erase output", str(edited_dir)), ("base model", report["base_model"]),
             ("concepts", ", ".join(info.get("concepts") or report["protocol"].get("concepts", [])))]
    if info:
        facts += [("method", f"ESD-{info['method']}" + (" (robust)" if info["robust"] else "")),
                  ("η (negative guidance)", f"{info['eta']:g}" if info.get("eta") is not None else "–"),
                  ("erase steps", str(info.get("steps")))]
    sampler = report["sampler"]
    facts += [("scorer", f"{report['protocol'].get('scorer')} ({metric})"),
              ("images", f"{report['n_per_prompt']} per prompt, seeds from {report['seed']}, the same for base "
                         "and edited"),
              ("sampler", f"{sampler.get('scheduler')}, {sampler.get('num_inference_steps')} steps, "
                          f"guidance {sampler.get('guidance_scale')}")]
    parts = ["<table class='facts'>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
             + "</table>"]

    s = report["summary"]
    parts.append("<h2>Summary</h2><table><tr><th>set</th><th>base</th><th>edited</th><th>change</th></tr>")
    for name in SETS:
        if s.get(name) is None:
            continue
        change = s[name] - s[f"{name}_base"]
        change = f"{100 * change:+.1f} pts" if pct else f"{change:+.3f}"
        parts.append(f"<tr><td>{name}</td><td>{_value(s[f'{name}_base'], pct)}</td><td>{_value(s[name], pct)}</td>"
                     f"<td>{change}</td></tr>")
    parts.append("</table>")
    if s.get("max_kept_drop") is not None:
        parts.append(f"<p>Largest drop of a kept concept: {_value(s['max_kept_drop'], pct)}.</p>")
    shows = any(r.get("any_erased") is not None for r in report["rows"])
    if s.get("any_erased") is not None:
        parts.append(f"<p>Erased prompts whose images show <em>any</em> erased concept (one edit, several "
                     f"concepts): {_value(s['any_erased_base'], True)} base, {_value(s['any_erased'], True)} "
                     "edited. An erased prompt that draws another erased concept passes the rate above but "
                     "counts here.</p>")

    if s.get("kept_shows_erased") is not None:
        parts.append(f"<p>Kept prompts whose images show an erased concept: {_value(s['kept_shows_erased_base'], True)} "
                     f"base, {_value(s['kept_shows_erased'], True)} edited. A kept prompt that draws the erased "
                     "concept has had it moved to it, not removed.</p>")
    if s.get("kept_colour") is not None:
        parts.append(f"<p>Kept prompts drawn in the colour they ask for: {_value(s['kept_colour_base'], True)} base, "
                     f"{_value(s['kept_colour'], True)} edited. A kept shape the edit repaints passes the kept rate "
                     "but not this.</p>")

    colours = any(r.get("colour") is not None for r in report["rows"])
    parts.append("<h2>By concept</h2><table><tr><th>set</th><th>concept</th><th>base</th><th>edited</th>"
                 "<th>images</th>" + ("<th>any erased concept, base / edited</th>" if shows else "")
                 + ("<th>colour as asked, base / edited</th>" if colours else "") + "</tr>")
    for r in report["rows"]:
        extra = ""
        if shows:
            extra = (f"<td>{_value(r['any_erased_base'], True)} / {_value(r['any_erased'], True)}</td>"
                     if r.get("any_erased") is not None else "<td></td>")
        if colours:
            extra += (f"<td>{_value(r['colour_base'], True)} / {_value(r['colour'], True)}</td>"
                      if r.get("colour") is not None else "<td></td>")
        parts.append(f"<tr><td>{e(r['prompt_set'])}</td><td>{e(r['key'])}</td><td>{_value(r['base'], pct)}</td>"
                     f"<td>{_value(r['edited'], pct)}</td><td>{r['images']}</td>{extra}</tr>")
    parts.append("</table>")
    if report["rows"]:
        parts.append(f"<img alt='base vs edited scores' src='{_png_data(_scores_chart(report['rows'], metric, pct))}'>")

    if info.get("attacks"):
        parts.append(f"<h2>Attacks</h2><p>Attack success rate: the share of attack images in which the scorer sees "
                     f"the concept ({e(str(info.get('attack_metric')))}); the control runs the same attack on the base "
                     "model.</p><table><tr><th>attack</th><th>plain prompt</th><th>attack success</th>"
                     "<th>base control</th></tr>")
        for name, a in info["attacks"].items():
            parts.append(f"<tr><td>{e(name)}</td><td>{_value(a['plain'], True)}</td><td>{_value(a['asr'], True)}</td>"
                         f"<td>{_value(a['control'], True)}</td></tr>")
        parts.append("</table>")

    sweep_json = edited_dir / "sweep" / "sweep.json"
    if sweep_json.is_file():
        parts.append(f"<h2>η sweep</h2><p>From {e(str(sweep_json))}.</p>"
                     f"<img alt='eta sweep' src='{_png_data(_sweep_chart(sweep_json))}'>")

    parts.append("<h2>Images: base vs edited</h2><p>Each prompt: the base model's row above the edited model's, "
                 "same seeds.</p>")
    for name in SETS:
        grid = eval_dir / f"grid_{name}.png"
        if grid.is_file():
            parts.append(f"<figure><figcaption>{name}</figcaption>"
                         f"<img alt='{name}: base vs edited' src='{_png_data(grid.read_bytes())}'></figure>")

    title = f"Evaluation of {edited_dir.name}"
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>"
            f"<body><h1>{e(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_eval_html(eval_dir: str | Path, edited_dir: str | Path | None = None) -> Path:
    """Write ``eval_dir/eval.html`` (see `eval_html`) atomically and return its path."""
    path = Path(eval_dir) / REPORT_NAME
    write_text(path, eval_html(eval_dir, edited_dir))
    return path


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .25em .8em; border: 1px solid #ddd; text-align: left; }
table.facts th { background: #f6f6f6; font-weight: 600; }
img { max-width: 100%; } figure { margin: 1em 0; } figure img { image-rendering: pixelated; }
figcaption { font-weight: 600; }
"""
