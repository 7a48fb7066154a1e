"""A complete diffusers pipeline directory from an erase output: the base model's tokenizer(s),
text encoder(s), VAE and scheduler around the edited UNet, with the erase's manifest, delta and
model card. Nothing else is needed to generate from it:

    >>> esd_sdk.export("erased-circle", format="pipeline")               # -> erased-circle-pipeline/
    >>> pipe = DiffusionPipeline.from_pretrained("erased-circle-pipeline")  # offline, SD 1.x / 2.x / XL

Layout: what `DiffusionPipeline.save_pretrained` writes (model_index.json, unet/, vae/,
text_encoder[_2]/, tokenizer[_2]/, scheduler/), plus the erase output's esd.json,
esd_delta.safetensors and README.md, so that the directory is also an erase output (eval,
apply/revert, `esd-sdk export` to other formats and `esd-sdk serve --model DIR` all read it),
and the base's own extras (esd_generation.json, the toy world's judge/).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import CARD_NAME, MANIFEST_NAME, load_edited_unet, load_manifest, model_card
from ..delta import DELTA_NAME
from ..files import atomic_dir, check_output
from ..generation import GENERATION_CONFIG_NAME
from ..loading import BaseModel, load_base, weights_hash

logger = logging.getLogger(__name__)

BASE_EXTRAS = (GENERATION_CONFIG_NAME, "judge")  # files of a base directory that travel with it


@dataclass
class PipelineExport:
    """What `export_pipeline` returns."""

    directory: Path
    pipeline_class: str  # e.g. StableDiffusionPipeline
    base_model: str  # the manifest's base model the other components came from
    weights_hash: str  # of the edited UNet it holds (= the manifest's edited_hash)

    def describe(self) -> str:
        return (f"wrote {self.directory} ({self.pipeline_class}: the edited UNet with {self.base_model}'s other "
                "components); load it with DiffusionPipeline.from_pretrained")


def assemble(source: str | Path, *, allow_pickle: bool = False) -> tuple[BaseModel, dict]:
    """The erase output's base model with the edited UNet in place of the base's, and its manifest."""
    manifest = load_manifest(source)
    base = load_base(manifest["base_model"], allow_pickle=allow_pickle)
    unet = load_edited_unet(source).eval()
    return base.with_components(unet=unet), manifest


def pipeline_card(manifest: dict) -> str:
    """The erase's model card, with how to load this directory as it is."""
    return model_card(manifest) + (
        "\n## This directory\n\nA complete diffusers pipeline (the base model's other components around the "
        "edited UNet):\n\n```python\nfrom diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained(\"<this directory>\")\n```\n")


def export_pipeline(source: str | Path, out: str | Path, *, overwrite: bool = False,
                    allow_pickle: bool = False) -> PipelineExport:
    """Write the pipeline directory of the erase output ``source`` to ``out`` (atomically)."""
    out = check_output(out, overwrite)
    source = Path(source)
    base, manifest = assemble(source, allow_pickle=allow_pickle)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        base.pipeline.save_pretrained(tmp, safe_serialization=True)
        shutil.copy2(source / MANIFEST_NAME, tmp / MANIFEST_NAME)
        if (source / DELTA_NAME).is_file():
            shutil.copy2(source / DELTA_NAME, tmp / DELTA_NAME)
        (tmp / CARD_NAME).write_text(pipeline_card(manifest))
        for name in BASE_EXTRAS if base.path is not None and base.path.is_dir() else ():
            extra = base.path / name
            if extra.is_dir():
                shutil.copytree(extra, tmp / name)
            elif extra.is_file():
                shutil.copy2(extra, tmp / name)
    logger.info("wrote pipeline %s (%s from %s)", out, type(base.pipeline).__name__, manifest["base_model"])
    return PipelineExport(out, type(base.pipeline).__name__, manifest["base_model"], weights_hash(base.unet))
