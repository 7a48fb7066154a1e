"""The ``esd-sdk`` command line: a thin layer that builds configs and calls the library.

Library errors (EsdError) become one-line messages with exit code 1; bad arguments are
click usage errors with exit code 2.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import click

from .attack import ATTACKS
from .errors import EsdError

EPILOG_GENERATE = """\b
Examples:
  esd-sdk generate --model toy --prompt "a red circle" -n 16 --out grid.png
  esd-sdk generate --model toy --prompt "a striped square" --prompt "a dotted cross" -n 8 --out grid.png
"""


def _errors_to_exit(fn):
    """Turn library errors into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EsdError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="esd-sdk")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Erase concepts from text-to-image diffusion models (ESD) and ship the edited model.

    Start with the bundled offline toy model: esd-sdk generate --model toy --prompt "a red circle" --out grid.png
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if verbose == 0:
        # diffusers/transformers warn at import time about things users cannot act on
        # (e.g. optimum and optimum-onnx sharing a namespace); -v shows them.
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


model_option = click.option(
    "--model", default="CompVis/stable-diffusion-v1-4", show_default=True, metavar="MODEL",
    help="'toy' (bundled, offline), a local diffusers directory, a .safetensors checkpoint, or a hub id.")
config_option = click.option(
    "--config", "model_config", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="For a single-file checkpoint: a local diffusers model of the same architecture to take configs from (offline).")
allow_pickle_option = click.option(
    "--allow-pickle", is_flag=True, help="Also load pickled weights (.bin/.ckpt). Runs code from the file: trust it first.")


@cli.command(epilog=EPILOG_GENERATE)
@model_option
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt; repeat for several (one grid row each).")
@click.option("-n", "--num-images", default=16, show_default=True, type=click.IntRange(min=1), help="Images per prompt.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the first image; image i uses seed+i.")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps (default: the model's own, 50 for SD).")
@click.option("--guidance", type=click.FloatRange(min=0), help="Classifier-free guidance scale (default: the model's own).")
@click.option("--unet", "unet_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Generate with this UNet directory (e.g. an erase output's unet/) instead of the model's.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("grid.png"), show_default=True,
              help="PNG file for the labelled image grid.")
@allow_pickle_option
@config_option
@_errors_to_exit
def generate(model, prompts, num_images, seed, steps, guidance, unet_dir, out, allow_pickle, model_config):
    """Generate images and write a labelled grid (one row per prompt)."""
    from .generation import GenerationConfig, generate as run_generate, image_grid
    from .loading import load_base

    if out.suffix.lower() != ".png":
        raise click.UsageError(f"--out must end in .png, got '{out.name}'")
    if not out.parent.exists():
        raise click.UsageError(f"--out directory {out.parent} does not exist: create it first")
    base = load_base(model, allow_pickle=allow_pickle, config=model_config)
    config = GenerationConfig.for_model(base)
    if steps is not None:
        config.num_inference_steps = steps
    if guidance is not None:
        config.guidance_scale = guidance
    unet = None
    if unet_dir is not None:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(unet_dir)
    images = run_generate(base, list(prompts), n=num_images, seed=seed, config=config, unet=unet, progress=True)
    labels = [f"#{seed + i}" for _ in prompts for i in range(num_images)]
    if base.family == "toy":
        from .toy import load_judge

        verdict = load_judge().judge(images)
        labels = [f"{c} {o}" if s == "plain" else f"{s[:4]} {c} {o}" for o, c, s in
                  zip(verdict.object, verdict.colour, verdict.style)]
    title = " | ".join(prompts) + f"  ({config.num_inference_steps} steps, guidance {config.guidance_scale}, seed {seed})"
    columns = num_images if len(prompts) > 1 else None
    image_grid(images, labels=labels, title=title, columns=columns).save(out)
    click.echo(f"wrote {out} ({len(images)} images, {base.describe()})")


@cli.command()
@model_option
@allow_pickle_option
@config_option
@_errors_to_exit
def info(model, allow_pickle, model_config):
    """Load a model and say what the loader found (family, prediction type, size)."""
    from .loading import load_base

    base = load_base(model, allow_pickle=allow_pickle, config=model_config)
    click.echo(base.describe())


EPILOG_ERASE = """\b
Examples:
  esd-sdk erase --concept "van gogh" --method x                 # the paper's ESD-x on SD 1.4
  esd-sdk erase --model toy --concept circle --method u --out erased-circle
  esd-sdk erase --model toy --concept striped --method x --preserve dotted
  esd-sdk erase --model toy --concept circle --dry-run          # which tensors would train
  esd-sdk erase --model toy --concept circle --out erased-circle --resume   # after Ctrl-C
  esd-sdk erase --model toy --concept circle --method all --robust --out robust-circle   # trained against an attack
  esd-sdk attack robust-circle                                  # then measure what attacks bring back
\b
Methods: x (cross-attention, styles), u (all but cross-attention: objects, nudity),
x-strict (attn2.to_k/to_v), self (self-attention), all, re:REGEX (your own selection).
Unset options take the paper's defaults (eta 1, 1000 steps, lr 1e-5, 50 DDIM steps,
guidance 3); on --model toy, the toy defaults (100 steps of 4 trajectories, 10 DDIM
steps, lr 2e-4; 2e-3 for x and x-strict).
"""


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "concept"


@cli.command(epilog=EPILOG_ERASE)
@click.option("--concept", "concepts", multiple=True, help="Prompt naming what to erase; repeat for several (each step trains every one).")
@click.option("--concepts-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="More concepts: one prompt a line, or a CSV with a 'concept' column.")
@click.option("--method", default="x", show_default=True, help="Which tensors train: x, u, x-strict, self, all, or re:REGEX.")
@click.option("--model", default=None, metavar="MODEL",
              help="Base model: a hub id (default CompVis/stable-diffusion-v1-4), a local diffusers directory, a .safetensors file, or 'toy'.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory [default: esd-<concept>-<method>].")
@click.option("--eta", "negative_guidance", type=float, help="Negative guidance eta (paper: 1.0).")
@click.option("--steps", type=int, help="Optimisation steps, each training every concept (paper: 1000; the toy: 100; N concepts: x ceil(sqrt(N))).")
@click.option("--lr", type=float, help="Adam learning rate (paper: 1e-5).")
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning rate over the steps: constant (paper) or cosine decay to 0 [constant].")
@click.option("--preserve", multiple=True, help="Prompt whose predictions stay the base model's; repeat for several.")
@click.option("--preserve-weight", type=float, help="Weight of the preservation loss [1.0].")
@click.option("--preserve-on", type=click.Choice(["concept", "own", "both"]),
              help="Hold --preserve prompts on the concept's x_t, on x_t from their own trajectories, or both [concept].")
@click.option("--concept-template", "concept_templates", multiple=True, metavar="TEMPLATE",
              help="A prompt the concept is erased in, {} where it goes, e.g. \"a photo of {}\"; repeat for several "
                   "(taken in turn, the same cost) [{}: the concept as given, the paper].")
@click.option("--preserve-template", "preserve_templates", multiple=True, metavar="TEMPLATE",
              help="A prompt the --preserve prompts are held in, {} where each goes, e.g. \"a photo of {}\"; "
                   "repeat for several (taken in turn, the same cost) [{}: the prompts as given].")
@click.option("--ddim-steps", type=int, help="DDIM steps of the x_t trajectories (paper: 50).")
@click.option("--sample-guidance", type=float, help="Guidance scale while sampling x_t (paper: 3).")
@click.option("--sampler", type=click.Choice(["edited", "frozen"]), help="Sample x_t with the edited model (paper) or the frozen one (upstream code).")
@click.option("--regenerate-every", type=int, help="Reuse one full trajectory for k steps (1 = the paper).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), help="Autocast precision; weights stay fp32 [fp32].")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="[default: on for CUDA]")
@click.option("--batch-size", type=int, help="Trajectories per step [1].")
@click.option("--resolution", type=int, help="Image size of the trajectories [the model's default].")
@click.option("--seed", type=int, help="Random seed [0].")
@click.option("--checkpoint-every", type=int, help="Steps between resumable checkpoints [100].")
@click.option("--robust", is_flag=True, default=None,
              help="Robust ESD: train against an embedding attack run inside the loop (see esd-sdk attack). "
                   "With --method all it also edits the cross-attention the attacks come through "
                   "(toy: about half as much brought back as with u, in the same time).")
@click.option("--robust-tokens", type=int, help="Robust: learned vectors in the adversarial prompt [6].")
@click.option("--robust-attack-steps", type=int, help="Robust: inner attack steps per refresh [10].")
@click.option("--robust-every", type=int, help="Robust: steps between refreshes of the adversarial prompt [1].")
@click.option("--robust-batch", type=int, help="Robust: concept latents per inner attack step, drawn from 8 [8].")
@click.option("--robust-start", type=float,
              help="Robust: fraction of the steps trained as plain ESD before the inner attack joins [0.5].")
@click.option("--robust-objective", type=click.Choice(["denoise", "match"]),
              help="Robust: the inner attack's objective: denoise frozen-model concept images (UnlearnDiff) or "
                   "match the frozen model's concept prediction on the step's x_t (AdvUnlearn) [denoise].")
@click.option("--robust-template", "robust_templates", multiple=True, metavar="TEMPLATE",
              help="Robust: a prompt the inner attack learns its word in, {} where the word goes, e.g. "
                   "\"a photo of {}\"; repeat for several (one word shared by all) [{}: the word alone].")
@click.option("--device", help="torch device [cuda if available, else cpu].")
@click.option("--processes", type=click.IntRange(min=1), default=1, show_default=True,
              help="Data-parallel processes on this machine, started with accelerate launch (one per GPU; "
                   "gloo on CPU). The global batch is processes x --batch-size.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same --out from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--dry-run", is_flag=True, help="Print which tensors would train, then exit.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@allow_pickle_option
@config_option
@_errors_to_exit
def erase(concepts, concepts_file, method, model, out, device, processes, resume, overwrite, dry_run, quiet,
          allow_pickle, model_config, **settings):
    """Erase a concept from a model's UNet with ESD and write the edited model.

    Writes OUT/unet (a standalone diffusers UNet), OUT/esd_delta.safetensors (only the
    changed tensors), OUT/esd.json (manifest) and OUT/README.md (model card).
    """
    from .artifact import prepare_output
    from .config import EraseConfig
    from .loading import DEFAULT_MODEL, load_base
    from .selection import select_parameters
    from .config import read_concepts
    from .distributed import is_main_process, launch
    from .training import erase as run_erase

    concepts = list(concepts) + (read_concepts(concepts_file) if concepts_file else [])
    if not concepts:
        raise click.UsageError("nothing to erase: pass --concept PROMPT (repeatable) or --concepts-file FILE")
    overrides = {k: v for k, v in settings.items() if v is not None and v != ()}
    for key in ("preserve", "concept_templates", "preserve_templates", "robust_templates"):
        if key in overrides:
            overrides[key] = list(overrides[key])
    # Bad settings fail here, in one line, before the model loads.
    EraseConfig.for_model("toy" if model == "toy" else "sd", list(concepts), method, **overrides)
    if out is None:
        out = Path(f"esd-{_slug(concepts[0])}-{_slug(method)}")
    if not dry_run and is_main_process():  # under a launcher, rank 0 alone owns the output
        prepare_output(out, overwrite=overwrite, resume=resume)
    if processes > 1 and not dry_run:  # the same command again, in each process that accelerate starts
        i = sys.argv.index("erase")
        args = [*sys.argv[1:i], "erase", *_without_option(sys.argv[i + 1:], "--processes")]
        raise SystemExit(launch(args, processes))
    base = load_base(model or DEFAULT_MODEL, allow_pickle=allow_pickle, config=model_config)
    config = EraseConfig.for_model(base, list(concepts), method, **overrides)
    if dry_run:
        selection = select_parameters(base.unet, config.method)
        click.echo(base.describe())
        click.echo(selection.summary())
        for name in selection.tensors:
            click.echo(f"  {name}")
        click.echo(f"settings: {config.to_dict()}")
        return
    # The CLI owns this base model: train it in place rather than hold a second UNet.
    result = run_erase(base, out=out, config=config, overwrite=overwrite, resume=resume, device=device,
                       progress=not quiet, inplace=True)
    m = result.manifest
    if m is not None:  # rank 0 (the only process, or the one that wrote out)
        named = ", ".join(repr(c) for c in config.concepts[:5]) + (f" and {len(config.concepts) - 5} more" if len(config.concepts) > 5 else "")
        click.echo(f"erased {named} with ESD-{config.method} in {m['training']['seconds']:.1f}s "
                   f"({m['trained']['summary']}, {m['training']['processes']} process(es)); wrote {out}")


@cli.command("apply-delta")
@click.argument("edit", type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None, metavar="MODEL", help="Model whose UNet the delta applies to [the edit's base model].")
@click.option("--unet", "unet_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Apply to this standalone UNet directory instead of --model's UNet.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory for the resulting UNet.")
@click.option("--revert", is_flag=True, help="Remove the delta from an edited UNet instead of adding it.")
@click.option("--no-check", is_flag=True, help="Skip the weights-hash checks (apply to a different base at your own risk).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@_errors_to_exit
def apply_delta(edit, model, unet_dir, out, revert, no_check, overwrite):
    """Apply an erase's delta to a base UNet (or revert it), writing a standalone UNet.

    EDIT is an erase output directory or its esd_delta.safetensors. Deltas stack: apply
    one edit's delta, then another's whose base is the first result.
    """
    from .delta import apply_delta as run_apply, read_delta
    from .files import atomic_dir, check_output
    from .loading import load_base

    check_output(out, overwrite)
    if unet_dir is not None:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(unet_dir, use_safetensors=True)
    else:
        model = model or read_delta(edit)[1].get("base_model")
        if not model:
            raise click.UsageError("the delta names no base model: pass --model or --unet")
        unet = load_base(model).unet
    unet = run_apply(unet, edit, revert=revert, check=not no_check, inplace=True)  # the UNet is ours
    with atomic_dir(out, overwrite=overwrite) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
    click.echo(f"{'reverted' if revert else 'applied'} {edit}; wrote {out}")


EPILOG_EVAL = """\b
Examples:
  esd-sdk eval erased-circle -n 8                                   # toy world, bundled judge
  esd-sdk eval esd-van-gogh --prompts vangogh --prompts artists --clip-model models/clip-vit-large-patch14
  esd-sdk eval esd-church --prompts imagenette --classifier-model models/resnet-50
  esd-sdk eval esd-nudity --prompts nudity -n 1                     # needs: pip install 'esd-sdk[eval]'
  esd-sdk sweep erased-circle --eta 0.5 --eta 1 --eta 2 --eta 4     # re-erase at each eta, plot
"""


def _scoring_options(fn):
    """Options shared by eval and sweep: what to generate and how to score it."""
    options = [
        click.option("--base", "base_model", metavar="MODEL", help="Base model [the one in EDITED/esd.json]."),
        click.option("--concept", "concepts", multiple=True, help="Erased concept to score [the manifest's]."),
        click.option("--keep", multiple=True, help="Concept that should survive [toy: every other of the same kind; "
                                                   "--prompts: every other concept in the sets]."),
        click.option("--prompts", multiple=True, metavar="SET|CSV",
                     help="The paper's prompt sets: vangogh, artists, imagenette, nudity, or a CSV; repeat to pool "
                          "[toy world: its own vocabulary]."),
        click.option("--scorer", type=click.Choice(["toy", "clip", "nudenet", "resnet"]),
                     help="[toy on the toy world; clip for vangogh/artists, resnet for imagenette, nudenet for nudity]"),
        click.option("--clip-model", type=click.Path(file_okay=False, path_type=Path),
                     help="Local transformers CLIPModel directory for --scorer clip."),
        click.option("--classifier-model", type=click.Path(file_okay=False, path_type=Path),
                     help="Local ResNetForImageClassification directory (microsoft/resnet-50 layout) for --scorer resnet."),
        click.option("--nudenet-threshold", default=0.6, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                     help="NudeNet detection score from which an exposed part counts."),
        click.option("-n", "--num-images", default=8, show_default=True, type=click.IntRange(min=1), help="Images per prompt."),
        click.option("--seed", default=0, show_default=True, type=int, help="First seed of toy prompts (CSV rows carry their own)."),
        click.option("--steps", type=click.IntRange(min=1), help="Denoising steps [the model's own: protocol]."),
        click.option("--guidance", type=click.FloatRange(min=0), help="Guidance scale [the model's own: protocol]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _scoring_kwargs(base_model, concepts, keep, prompts, scorer, clip_model, classifier_model, nudenet_threshold,
                    num_images, seed, steps, guidance) -> dict:
    return dict(base_model=base_model, concepts=list(concepts) or None, keep=list(keep) or None,
                prompts=list(prompts) or None, scorer=scorer, clip_model=clip_model, classifier_model=classifier_model,
                nudenet_threshold=nudenet_threshold, n=num_images, seed=seed, steps=steps, guidance=guidance)


@cli.command("eval", epilog=EPILOG_EVAL)
@click.argument("edited", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_scoring_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Report directory [EDITED/eval].")
@click.option("--no-update", is_flag=True, help="Do not write the scores into EDITED/esd.json and README.md.")
@click.option("--attack", "attacks", multiple=True, type=click.Choice(ATTACKS),
              help="Also red-team the erase with this attack (see esd-sdk attack); repeat for several.")
@click.option("--attack-steps", type=int, help="Optimisation steps of each attack [200].")
@click.option("--attack-tokens", type=int, help="Learned tokens per prompt [inversion 8, embedding 6].")
@_errors_to_exit
def evaluate(edited, out, no_update, attacks, attack_steps, attack_tokens, **scoring):
    """Score an erase: erased, paraphrased and kept concepts, base vs edited, same seeds.

    Writes eval.json, eval.md, base-vs-edited grids and eval.html (one self-contained page with all
    of it), and records the scores in the manifest.
    With --attack, also runs `esd-sdk attack` on the same prompts, scorer and seeds (OUT/attack,
    or EDITED/attack).
    """
    from .artifact import load_manifest
    from .attack import budgets_for, run_attacks
    from .evaluate import evaluate as run_eval
    from .loading import load_base
    from .report import write_eval_html

    kwargs = _scoring_kwargs(**scoring)
    if attacks:
        budgets_for(attacks, steps=attack_steps, n_tokens=attack_tokens)  # a bad budget fails before the eval runs
        # One base model for the eval and the attacks.
        kwargs["base_model"] = load_base(kwargs["base_model"] or load_manifest(edited)["base_model"])
    report = run_eval(edited, output_dir=out, update=not no_update, **kwargs)
    click.echo(report.markdown().rstrip())
    click.echo(f"wrote {out or edited / 'eval'} (eval.json, eval.md, grid_*.png, eval.html: open it in a browser)")
    if attacks:
        sampler_steps = kwargs.pop("steps")  # eval's --steps is the sampler's
        kwargs.pop("keep")
        attacked = run_attacks(edited, list(attacks), steps=attack_steps, n_tokens=attack_tokens,
                               out=out / "attack" if out else None, update=not no_update, sampler_steps=sampler_steps,
                               progress=True, **kwargs)
        click.echo(attacked.markdown().rstrip())
        click.echo(f"wrote {out / 'attack' if out else edited / 'attack'} (attack.json, attack.md, grid_*.png)")
        if not no_update:  # eval.html shows the attack success rates the manifest now holds
            write_eval_html(out or edited / "eval", edited)


@cli.command(epilog=EPILOG_EVAL)
@click.argument("edited", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--eta", "etas", multiple=True, required=True, type=float, help="Negative guidance to erase with; repeat.")
@_scoring_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Report directory [EDITED/sweep].")
@click.option("--device", help="torch device for the erases [cuda if available, else cpu].")
@_errors_to_exit
def sweep(edited, etas, out, device, **scoring):
    """Re-run EDITED's erase at each --eta and score every result: the erasure/interference trade-off.

    Uses the settings in EDITED/esd.json (only eta changes) and the same prompts and scorer as
    eval; writes sweep.json, sweep.md and sweep.png. EDITED itself is not changed.
    """
    from .evaluate import sweep as run_sweep

    report = run_sweep(edited, list(etas), output_dir=out, device=device, **_scoring_kwargs(**scoring))
    click.echo(report.markdown().rstrip())
    click.echo(f"wrote {out or edited / 'sweep'} (sweep.json, sweep.md, sweep.png)")


EPILOG_ATTACK = """\b
Examples:
  esd-sdk attack erased-circle                                  # inversion + embedding, default budgets
  esd-sdk attack erased-circle --attack embedding --steps 100 -n 4
  esd-sdk attack esd-van-gogh --prompts vangogh --clip-model models/clip-vit-large
  esd-sdk eval erased-circle --attack inversion --attack embedding
  esd-sdk erase --model toy --concept circle --method all --robust   # an erase trained against them
"""


@cli.command(epilog=EPILOG_ATTACK)
@click.argument("edited", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--attack", "attacks", multiple=True, type=click.Choice(ATTACKS),
              help="Attack to run; repeat for several [inversion and embedding].")
@click.option("--steps", type=int, help="Optimisation steps of each attack [200].")
@click.option("--lr", type=float, help="Adam learning rate of the learned tokens [0.05].")
@click.option("--tokens", "n_tokens", type=int, help="Learned tokens per prompt [inversion 8, embedding 6].")
@click.option("--images", "n_images", type=int, help="Concept images per prompt to learn from [8].")
@click.option("-n", "--num-images", default=8, show_default=True, type=click.IntRange(min=1),
              help="Images per prompt to score.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seeds the attacks; first seed of toy prompts (CSV rows carry their own).")
@click.option("--base", "base_model", metavar="MODEL", help="Base model [the one in EDITED/esd.json].")
@click.option("--concept", "concepts", multiple=True, help="Erased concept to attack [the manifest's].")
@click.option("--prompts", multiple=True, metavar="SET|CSV",
              help="The paper's prompt sets (vangogh, artists, imagenette, nudity) or a CSV [toy world: its own].")
@click.option("--scorer", type=click.Choice(["toy", "clip", "nudenet", "resnet"]),
              help="[toy on the toy world; clip for vangogh/artists, resnet for imagenette, nudenet for nudity]")
@click.option("--clip-model", type=click.Path(file_okay=False, path_type=Path),
              help="Local transformers CLIPModel directory for --scorer clip.")
@click.option("--classifier-model", type=click.Path(file_okay=False, path_type=Path),
              help="Local ResNetForImageClassification directory for --scorer resnet.")
@click.option("--sample-steps", type=click.IntRange(min=1), help="Denoising steps [the model's own].")
@click.option("--guidance", type=click.FloatRange(min=0), help="Guidance scale [the model's own].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Report directory [EDITED/attack].")
@click.option("--no-update", is_flag=True, help="Do not write the results into EDITED/esd.json and README.md.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_errors_to_exit
def attack(edited, attacks, steps, lr, n_tokens, n_images, num_images, seed, base_model, concepts, prompts, scorer,
           clip_model, classifier_model, sample_steps, guidance, out, no_update, quiet):
    """Red-team an erase: try to bring the erased concept back with white-box attacks.

    inversion learns a new word from images of the concept (textual inversion) and puts it in
    place of the concept word; embedding optimises a few prompt token embeddings (UnlearnDiff).
    Each attack also runs on the base model as the control, which must reach a high rate for
    the attack success rate (ASR) to mean anything. Writes attack.json, attack.md and grids, and
    records the results in the manifest.
    """
    from .attack import run_attacks

    report = run_attacks(edited, list(attacks) or ATTACKS, steps=steps, lr=lr, n_tokens=n_tokens, n_images=n_images,
                         n=num_images, seed=seed, out=out, update=not no_update, scorer=scorer,
                         prompts=list(prompts) or None, base_model=base_model, concepts=list(concepts) or None,
                         clip_model=clip_model, classifier_model=classifier_model, sampler_steps=sample_steps,
                         guidance=guidance, progress=not quiet)
    click.echo(report.markdown().rstrip())
    click.echo(f"wrote {out or edited / 'attack'} (attack.json, attack.md, grid_*.png)")


def _latest_erase_output() -> Path:
    """The most recently written erase output directory under the current directory."""
    candidates = [p.parent for p in Path(".").glob("*/esd.json")] + [p.parent for p in Path(".").glob("*/*/esd.json")]
    if not candidates:
        raise click.UsageError("no INPUT given and no erase output (a directory with esd.json) here: "
                               "pass the directory esd-sdk erase wrote")
    return max(candidates, key=lambda p: (p / "esd.json").stat().st_mtime)


EPILOG_EXPORT = """\b
Examples:
  esd-sdk export erased-circle --format onnx              # -> erased-circle-onnx/
  esd-sdk export --format tensorrt                        # newest erase output here -> <it>-tensorrt/
  esd-sdk export erased-circle --format triton --precision fp16
  esd-sdk export erased-circle --format pipeline          # -> erased-circle-pipeline/ (DiffusionPipeline)
  esd-sdk export erased-circle --format onnx-pipeline     # -> ORTStableDiffusionPipeline directory
  esd-sdk export erased-circle --format lora --rank 8     # -> pipe.load_lora_weights(DIR)
  esd-sdk export erased-circle --format single-file       # -> erased-circle.safetensors (A1111/ComfyUI)
  esd-sdk export erased-circle --format triton-t2i        # -> Triton repository: prompts in, images out
"""


@cli.command(epilog=EPILOG_EXPORT)
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "tensorrt", "triton", "pipeline", "onnx-pipeline", "lora",
                                                    "single-file", "triton-t2i"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="Output directory [default: SOURCE-FORMAT; single-file: SOURCE.safetensors].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), help="ONNX: fp32 [default] or fp16; TensorRT: fp16 [default], bf16 or fp32.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--dynamic", is_flag=True, help="TensorRT: dynamic batch 1-8 and latent 32-128 instead of a static profile.")
@click.option("--max-batch-size", type=int, default=8, show_default=True, help="Triton: max batch size.")
@click.option("--rank", type=click.IntRange(min=1), help="LoRA: the rank of every tensor [by --rank-energy].")
@click.option("--rank-energy", type=click.FloatRange(0, 1, min_open=True),
              help="LoRA: per tensor, the smallest rank keeping this share of the delta's energy [0.99].")
@click.option("--optimize/--no-optimize", default=None,
              help="ONNX: fuse attention, LayerNorm, GELU (and GroupNorm etc. on CUDA) with ONNX Runtime's optimizer "
                   "[default: on, the plain graph if the fused one fails parity]; --no-optimize for other runtimes "
                   "or refitting every weight.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@_errors_to_exit
def export(source, fmt, out, precision, opset, dynamic, max_batch_size, rank, rank_energy, optimize, overwrite):
    """Export an edited UNet (an erase output, a UNet or a pipeline directory) to ONNX,
    a TensorRT engine or a Triton model repository; or an erase output as a whole pipeline
    (diffusers or ONNX Runtime), a LoRA or a single-file checkpoint.

    Without SOURCE, the newest erase output in the current directory is used (and named).
    Every ONNX export passes a parity check against PyTorch or is not written.
    """
    from .export import export as run_export

    if source is None:
        source = _latest_erase_output()
        click.echo(f"exporting {source} (newest erase output here)")
    result = run_export(source, fmt, out, precision=precision, opset=opset, dynamic=dynamic,
                        max_batch_size=max_batch_size, rank=rank, rank_energy=rank_energy, overwrite=overwrite,
                        optimize=optimize)
    click.echo(result.describe())


EPILOG_BENCH = """\b
Examples:
  esd-sdk bench erased-circle                                   # torch + onnxruntime (+ tensorrt on a GPU)
  esd-sdk bench erased-circle --backend onnxruntime --runs 100 --out bench/
  esd-sdk bench erased-circle --device cuda --precision fp16    # GPU: torch fp16, ORT fp16, TensorRT fp16
"""


@cli.command(epilog=EPILOG_BENCH)
@click.argument("edited", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", "base_model", metavar="MODEL", help="Unedited model [the one in EDITED/esd.json].")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["torch", "onnxruntime", "tensorrt"]),
              help="Backend to measure; repeat for several [torch, onnxruntime, and tensorrt on a GPU].")
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=1), help="Timed UNet-step pairs.")
@click.option("--e2e-runs", default=10, show_default=True, type=click.IntRange(min=0), help="Timed text-to-image pairs.")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="Warm-up calls per model.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Images per call (UNet batch 2x).")
@click.option("--steps", type=click.IntRange(min=1), help="Denoising steps end to end [the model's].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True)
@click.option("--device", help="torch device [cuda if available, else cpu].")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads [its default].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Report directory [EDITED-bench].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@_errors_to_exit
def bench(edited, base_model, backends, runs, e2e_runs, warmup, batch, steps, precision, device, threads, out, quiet):
    """Latency of an edited model against the unedited one, per backend: UNet step and end to
    end, p50/p90/p99, interleaved A/B after warm-up. Writes bench.json, bench.md and bench.png.

    Without EDITED, the newest erase output in the current directory is used. ONNX exports and
    engines of both models are made on first use and kept in OUT/exports.
    """
    from .serving.bench import benchmark

    if edited is None:
        edited = _latest_erase_output()
        click.echo(f"benchmarking {edited} (newest erase output here)")
    out = out or edited.parent / f"{edited.name}-bench"
    report = benchmark(edited, list(backends) or None, base_model=base_model, runs=runs, e2e_runs=e2e_runs,
                       warmup=warmup, batch=batch, steps=steps, precision=precision, device=device, threads=threads,
                       out=out, progress=not quiet)
    click.echo(report.markdown().rstrip())
    click.echo(f"wrote {out} (bench.json, bench.md, bench.png)")


EPILOG_SERVE = """\b
Examples:
  esd-sdk serve --model erased-circle                          # PyTorch UNet on :8000
  esd-sdk serve --model erased-circle --backend onnxruntime    # uses erased-circle-onnx/ (esd-sdk export)
  esd-sdk serve --model erased-circle --compare                # base and edited: open http://127.0.0.1:8000/
  esd-sdk serve --model erased-circle --triton                 # Triton: HTTP :8000, gRPC :8001, metrics :8002
  curl -s localhost:8000/generate -d '{"prompt": "a red circle", "seed": 3}' -o out.png
  curl -s localhost:8000/generate -d '{"prompt": "a red circle", "variant": "base"}' -o base.png   # --compare
  curl -s localhost:8000/metrics                               # API docs: http://127.0.0.1:8000/docs
"""


@cli.command(epilog=EPILOG_SERVE)
@click.option("--model", required=True, metavar="DIR",
              help="An erase output directory (served with its base model), or any model: toy, a diffusers directory.")
@click.option("--backend", type=click.Choice(["torch", "onnxruntime", "tensorrt"]), default="torch", show_default=True)
@click.option("--unet", "unet", type=click.Path(exists=True, path_type=Path),
              help="onnxruntime/tensorrt: the export to run [MODEL-onnx / MODEL-tensorrt].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 for all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1), help="Requests per UNet batch.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="How long an idle worker waits for companions to a request.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Waiting requests beyond which new ones get 429.")
@click.option("--deadline-s", type=click.FloatRange(min=0, min_open=True),
              help="Default request deadline in seconds: past it the client gets 504 and a queued request is dropped "
                   "[none].")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Run one-step batches at the model's size before /healthz answers ok.")
@click.option("--device", help="torch device [cuda if available, else cpu].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="torch backend: UNet precision.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime: intra-op threads.")
@click.option("--compare", is_flag=True,
              help="Also serve the base model (variant 'base') next to the edited one, for the review page at / "
                   "(torch backend, MODEL an erase output).")
@click.option("--triton", is_flag=True,
              help="Serve on Triton Inference Server (the binaries nvidia-pytriton bundles) instead: model text2image, "
                   "HTTP on --port, gRPC on --port+1, metrics on --port+2; Triton batches with --max-batch, "
                   "--max-wait-ms, --max-queue and --deadline-s.")
@allow_pickle_option
@_errors_to_exit
def serve(model, backend, unet, host, port, max_batch, max_wait_ms, max_queue, deadline_s, warmup, device, precision,
          threads, compare, triton, allow_pickle):
    """Serve text-to-image over HTTP: the review page (GET /), POST /generate, GET /healthz,
    GET /metrics (Prometheus), API docs at /docs.

    Concurrent requests are micro-batched into one UNet batch; a full queue answers 429, a
    request whose deadline passes answers 504; /healthz answers 503 until the warm-up has run;
    Ctrl-C or SIGTERM stops accepting, finishes every accepted request, then exits. With
    --compare the page shows the base and the edited model's images from the same seeds side by side.
    """
    from .artifact import is_artifact, load_manifest
    from .serving import Service, open_comparison, open_pipeline
    from .serving.server import serve as run_server

    if triton:
        if compare:
            raise click.UsageError("--compare is the built-in server's review page: drop it with --triton")
        return _serve_triton(model, host=host, port=port, backend=backend, unet=unet, device=device,
                             precision=precision, threads=threads, max_batch_size=max_batch, max_wait_ms=max_wait_ms,
                             max_queue=max_queue, deadline_s=deadline_s, warmup=warmup, allow_pickle=allow_pickle)
    if compare and (backend != "torch" or unet is not None):
        raise click.UsageError("--compare runs both UNets on the torch backend: drop --backend/--unet")
    if compare:
        pipes = open_comparison(model, device=device, precision=precision, allow_pickle=allow_pickle)
        pipe = pipes["edited"]
    else:
        pipes = pipe = open_pipeline(model, backend, unet, device=device, precision=precision, threads=threads,
                                     allow_pickle=allow_pickle)
    service = Service(pipes, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, deadline_s=deadline_s,
                      warmup=warmup)
    manifest = load_manifest(model) if is_artifact(Path(model)) else None

    def ready(server):
        click.echo(f"serving {pipe.describe()}{' and its base model' if compare else ''} at {server.url} "
                   f"(max batch {max_batch}, queue {max_queue}); review page {server.url}/, API docs "
                   f"{server.url}/docs; Ctrl-C to stop", err=True)

    try:
        run_server(service, host, port, model_name=str(model), ready=ready, manifest=manifest)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port") from e
    stats = service.stats()
    click.echo(f"stopped after {stats.images} images in {stats.batches} batches", err=True)


def _serve_triton(model, **options) -> None:
    from .serving.triton_app import serve_triton

    def ready(server):
        click.echo(f"Triton serving text2image ({model} on {options['backend']}) at http://{server.http_url} "
                   f"(gRPC :{server.grpc_port}; log {server.log_file}); Ctrl-C to stop", err=True)

    code = serve_triton(model, ready=ready, **options)
    click.echo(f"Triton stopped (exit code {code})", err=True)


def main() -> None:
    cli(prog_name="esd-sdk")
