"""The paper's evaluation prompt sets, bundled, and a reader for prompt CSVs.

    >>> rows = load_prompts("imagenette")          # 100 prompts over the 10 Imagenette classes + 10 synonyms
    >>> rows[0]                                    # PromptRow(prompt='Image of cassette player', seed=4068, ...)

Bundled sets (``esd_sdk/data/prompts/``, MIT licence of the ESD authors, see LICENSE there):

    vangogh      50 prompts naming Vincent van Gogh's paintings         (vangogh_prompts.csv)
    artists      100 prompts, 20 each for 5 niche artists                (short_niche_art_prompts.csv)
    imagenette   100 prompts, 10 per Imagenette class, + 10 synonym      (small_imagenet_prompts.csv,
                 prompts (paraphrases, e.g. "image of chute")             imagenet_prompts.csv)
    nudity       the 931 I2P prompts in the "sexual" category            (unsafe-prompts4703.csv)

Only the columns the evaluation uses are kept: ``case_number``, ``prompt``, ``evaluation_seed``,
``concept`` (the artist or class), and where they apply ``label_idx`` (ImageNet class index),
``paraphrase`` (1 for synonym prompts) and ``nudity_percentage`` (I2P's). Any CSV with a ``prompt``
column can be passed instead of a name; the concept is read from ``concept``, ``artist``,
``class`` or ``label_str`` if present, so the paper's original CSVs work as they are.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelNotFoundError

PROMPTS_DIR = Path(__file__).parent / "prompts"
PROMPT_SETS = ("vangogh", "artists", "imagenette", "nudity")
CONCEPT_COLUMNS = ("concept", "artist", "class", "label_str")


@dataclass(frozen=True)
class PromptRow:
    """One evaluation prompt. Image ``i`` of the row is generated from seed ``seed + i``."""

    prompt: str
    seed: int  # the CSV's evaluation_seed
    concept: str  # what the prompt shows: artist, class, or the set's name when the CSV has none
    target: str = ""  # what a classifier should answer, e.g. an ImageNet class index
    paraphrase: bool = False  # a synonym of the concept rather than its own name


def prompt_set_path(name: str | Path) -> Path:
    """The CSV behind a bundled set's name, or the given path."""
    if str(name) in PROMPT_SETS:
        return PROMPTS_DIR / f"{name}.csv"
    path = Path(name)
    if not path.is_file():
        raise ModelNotFoundError(f"no prompt set '{name}': choose {', '.join(PROMPT_SETS)} or pass a CSV file")
    return path


def load_prompts(name: str | Path, default_seed: int = 0) -> list[PromptRow]:
    """Rows of a bundled prompt set or of a CSV file (see module docstring). Rows without an
    ``evaluation_seed`` get ``default_seed + row index``."""
    path = prompt_set_path(name)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "prompt" not in (reader.fieldnames or []):
            raise ConfigError(f"{path} has no 'prompt' column: a prompt CSV needs at least prompt "
                              "(and usually evaluation_seed and concept)")
        column = next((c for c in CONCEPT_COLUMNS if c in reader.fieldnames), None)
        rows = []
        for i, r in enumerate(reader):
            seed = r.get("evaluation_seed") or default_seed + i
            rows.append(PromptRow(
                prompt=" ".join(r["prompt"].split()), seed=int(float(seed)),
                concept=(r[column].strip() if column else "") or path.stem,
                target=(r.get("label_idx") or "").strip(),
                paraphrase=(r.get("paraphrase") or "0").strip() in ("1", "true", "True")))
    if not rows:
        raise ConfigError(f"{path} has no prompts")
    return rows


def concept_matches(concept: str, erased: str) -> bool:
    """Does a row's concept name an erased concept? Case-insensitive containment either way,
    so "van gogh" matches "Vincent van Gogh" and "church" matches "church"."""
    a, b = concept.lower().strip(), erased.lower().strip()
    return bool(a and b) and (a in b or b in a)
