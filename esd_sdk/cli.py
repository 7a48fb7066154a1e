"""The ``esd-sdk`` command line: a thin layer that builds configs and calls the library.

Library errors (EsdError) become one-line messages with exit code 1; bad arguments are
click usage errors with exit code 2.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import click

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
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


model_option = click.option(
    "--model", default="toy", show_default=True, metavar="MODEL",
    help="'toy' (bundled, offline), a local diffusers directory, a .safetensors checkpoint, or a hub id.")
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
@_errors_to_exit
def generate(model, prompts, num_images, seed, steps, guidance, unet_dir, out, allow_pickle):
    """Generate images and write a labelled grid (one row per prompt)."""
    from .generate import GenerationConfig, generate as run_generate, image_grid
    from .loading import load_base

    if out.suffix.lower() != ".png":
        raise click.UsageError(f"--out must end in .png, got '{out.name}'")
    if not out.parent.exists():
        raise click.UsageError(f"--out directory {out.parent} does not exist: create it first")
    base = load_base(model, allow_pickle=allow_pickle)
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
@_errors_to_exit
def info(model, allow_pickle):
    """Load a model and say what the loader found (family, prediction type, size)."""
    from .loading import load_base

    base = load_base(model, allow_pickle=allow_pickle)
    click.echo(base.describe())


def main() -> None:
    cli(prog_name="esd-sdk")
