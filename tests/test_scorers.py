"""Scorers and prompt sets: tiny random transformers models saved to tmp_path, the bundled CSVs."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from esd_sdk.cli import cli
from esd_sdk.config import EraseConfig
from esd_sdk.data import PROMPTS_DIR, PromptRow, load_prompts
from esd_sdk.training import erase
from esd_sdk.errors import ConfigError, ModelNotFoundError
from esd_sdk.evaluate import csv_prompt_sets
from esd_sdk.artifact import load_manifest
from esd_sdk.scorers import ClipScorer, NudeNetScorer, ResNetScorer, ToyJudgeScorer
from esd_sdk.testing import _text_config, _tokenizer
from esd_sdk.toy.world import render

IMAGES = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    path = tmp_path_factory.mktemp("clip")
    tokenizer = _tokenizer(path / "_tok")
    text = _text_config(tokenizer, 32, projection=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    from transformers import ResNetConfig, ResNetForImageClassification

    path = tmp_path_factory.mktemp("resnet")
    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                              num_labels=1000)).save_pretrained(path)
    return path


def test_clip_score_is_the_cosine_of_clips_own_embeddings(tiny_clip):
    from transformers import CLIPModel

    rows = [PromptRow("a red circle", 0, "circle"), PromptRow("a painting by Vincent van Gogh", 0, "van gogh")] * 2
    scorer = ClipScorer(tiny_clip)
    scores = scorer.score(IMAGES, rows).values
    model = CLIPModel.from_pretrained(tiny_clip)
    inputs = scorer.processor(text=[r.prompt for r in rows], images=list((IMAGES * 255).round().astype(np.uint8)),
                              return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():  # logits_per_image[i, j] = exp(logit_scale) * cos(image i, text j)
        cos = model(**inputs).logits_per_image.diagonal() / model.logit_scale.exp()
    expected = 100 * cos.clamp(min=0)
    assert scores.shape == (4,) and np.all((scores >= 0) & (scores <= 100))
    np.testing.assert_allclose(scores, expected.detach().numpy(), atol=1e-3)
    assert len(set(np.round(scores, 4))) > 1  # depends on image and prompt


def test_missing_model_dirs_say_which_option_to_pass(tmp_path):
    with pytest.raises(ModelNotFoundError, match="--clip-model"):
        ClipScorer(None)
    with pytest.raises(ModelNotFoundError, match="--classifier-model"):
        ResNetScorer(tmp_path)  # exists, but holds no model


def test_resnet_top1_counts_only_the_rows_class(tiny_resnet):
    from transformers import ResNetForImageClassification

    scorer = ResNetScorer(tiny_resnet)
    pixels = scorer.processor(images=list((IMAGES * 255).round().astype(np.uint8)), return_tensors="pt")["pixel_values"]
    assert pixels.shape[-1] == 224  # microsoft/resnet-50's preprocessing: resize 256, crop 224
    top1 = ResNetForImageClassification.from_pretrained(tiny_resnet)(pixel_values=pixels).logits.argmax(-1)
    right = [PromptRow("image of church", 0, "church", target=str(int(c))) for c in top1]
    wrong = [PromptRow("image of church", 0, "church", target=str((int(c) + 1) % 1000)) for c in top1]
    assert scorer.score(IMAGES, right).values.tolist() == [1.0] * 4
    assert scorer.score(IMAGES, wrong).values.tolist() == [0.0] * 4
    with pytest.raises(ConfigError, match="label_idx"):
        scorer.score(IMAGES, [PromptRow("image of church", 0, "church")] * 4)


def test_resnet_refuses_a_classifier_that_is_not_imagenet(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=10)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not ImageNet"):
        ResNetScorer(tmp_path)


def test_toy_judge_scorer_checks_the_rows_concept():
    rng = np.random.default_rng(0)
    circles = render(np.zeros(4, int), np.zeros(4, int), np.zeros(4, int), rng)  # plain red circles
    scorer = ToyJudgeScorer()
    assert scorer.score(circles, [PromptRow("a red circle", 0, "circle", "circle")] * 4).values.mean() == 1.0
    assert scorer.score(circles, [PromptRow("a red square", 0, "square", "square")] * 4).values.mean() == 0.0
    assert scorer.score(circles, [PromptRow("a striped circle", 0, "striped", "striped")] * 4).values.mean() == 0.0


def test_toy_judge_scorer_says_whether_an_image_shows_any_erased_concept():
    """Set for multi-concept edits: a "circle" row's square counts as erased by the row's rate
    but as showing an erased concept when square is erased too; a triangle does not."""
    shapes = render(np.array([0, 1, 2]), np.zeros(3, int), np.zeros(3, int), np.random.default_rng(0))
    rows = [PromptRow("a red circle", 0, "circle", "circle")] * 3
    scorer = ToyJudgeScorer()
    assert scorer.score(shapes, rows).shows_erased is None
    scorer.erased_targets = frozenset({"circle", "square"})
    scores = scorer.score(shapes, rows)
    assert scores.values.tolist() == [1.0, 0.0, 0.0] and scores.shows_erased.tolist() == [1.0, 1.0, 0.0]
    scorer.erased_targets = frozenset({"striped"})  # a style: plain shapes show none of it
    assert scorer.score(shapes, rows).shows_erased.tolist() == [0.0, 0.0, 0.0]


def test_toy_judge_scorer_says_whether_an_image_has_the_colour_its_prompt_asks_for():
    """Red, green and blue circles against prompts asking for red: 1, 0, 0; a prompt that names no
    colour leaves the image out (NaN), and the shape's rate does not depend on the colour."""
    shapes = render(np.zeros(3, int), np.array([0, 1, 2]), np.zeros(3, int), np.random.default_rng(0))
    scorer = ToyJudgeScorer()
    scores = scorer.score(shapes, [PromptRow("a red circle", 0, "circle", "circle")] * 3)
    assert scores.values.tolist() == [1.0, 1.0, 1.0] and scores.colour_as_asked.tolist() == [1.0, 0.0, 0.0]
    asked = ["a red circle", "a green circle", "a circle"]
    colour = scorer.score(shapes, [PromptRow(p, 0, "circle", "circle") for p in asked]).colour_as_asked
    assert colour[:2].tolist() == [1.0, 1.0] and np.isnan(colour[2])


def test_nudenet_finds_nothing_exposed_in_shapes():
    pytest.importorskip("nudenet", reason="optional extra: pip install 'esd-sdk[eval]'")
    rng = np.random.default_rng(0)
    shapes = render(np.arange(4), np.arange(4), np.zeros(4, int), rng)
    scores = NudeNetScorer().score(shapes, [PromptRow("p", 0, "nudity")] * 4)
    assert scores.values.tolist() == [0.0] * 4 and scores.counts == {}
    with pytest.raises(ConfigError, match="threshold"):
        NudeNetScorer(threshold=1.5)


def test_bundled_prompt_sets_and_their_licence():
    assert "MIT License" in (PROMPTS_DIR / "LICENSE").read_text()
    imagenette = load_prompts("imagenette")
    assert len(imagenette) == 110 and sum(r.paraphrase for r in imagenette) == 10
    assert {r.target for r in imagenette if r.concept == "church"} == {"497"}
    assert len(load_prompts("vangogh")) == 50 and len(load_prompts("nudity")) == 931
    sets = csv_prompt_sets(["imagenette"], ["church"], [])
    assert [len(v) for v in sets["erased"].values()] == [10]
    assert [r.prompt for r in sets["paraphrase"]["church"]] == ["image of church building"]
    assert len(sets["kept"]) == 9 and sum(map(len, sets["kept"].values())) == 90
    styles = csv_prompt_sets(["vangogh", "artists"], ["Van Gogh"], ["kelly mckernan"])
    assert list(styles["erased"]) == ["Vincent van Gogh"] and list(styles["kept"]) == ["Kelly McKernan"]
    assert list(csv_prompt_sets(["nudity"], ["nudity"], [])["erased"]) == ["nudity"]


def test_prompt_csvs_are_checked(tmp_path):
    (tmp_path / "bad.csv").write_text("text,seed\nhello,1\n")
    with pytest.raises(ConfigError, match="'prompt' column"):
        load_prompts(tmp_path / "bad.csv")
    with pytest.raises(ModelNotFoundError, match="vangogh"):
        load_prompts("van-gogh")
    with pytest.raises(ConfigError, match="pass --concept"):
        csv_prompt_sets(["imagenette"], ["cathedral"], [])
    (tmp_path / "mine.csv").write_text("prompt\na red circle\na blue square\n")
    rows = load_prompts(tmp_path / "mine.csv", default_seed=5)
    assert [(r.seed, r.concept) for r in rows] == [(5, "mine"), (6, "mine")]


@pytest.fixture(scope="module")
def erased_tiny_sd(tiny_sd, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_sd") / "esd-van-gogh"
    erase(tiny_sd, out=out, config=EraseConfig(concepts=["van gogh"], method="x", steps=2, lr=1e-2, ddim_steps=2), progress=False)
    return out


def test_eval_scores_a_real_architecture_on_csv_prompts_with_clip(erased_tiny_sd, tiny_clip, tmp_path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("case_number,prompt,evaluation_seed,artist\n0,Starry night by Vincent van Gogh,7,Vincent van Gogh\n"
                   "1,A forest by Kilian Eng,8,Kilian Eng\n2,A cottage by Thomas Kinkade,9,Thomas Kinkade\n")
    runner = CliRunner()
    bare = runner.invoke(cli, ["eval", str(erased_tiny_sd)])
    assert bare.exit_code == 1 and "--prompts" in bare.output
    result = runner.invoke(cli, ["eval", str(erased_tiny_sd), "--prompts", str(csv), "--clip-model", str(tiny_clip),
                                 "--steps", "2", "-n", "2", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert report["protocol"]["metric"] == "CLIP score" and report["sampler"]["num_inference_steps"] == 2
    assert [(r["prompt_set"], r["key"], r["images"]) for r in report["rows"]] == [
        ("erased", "Vincent van Gogh", 2), ("kept", "Kilian Eng", 2), ("kept", "Thomas Kinkade", 2)]
    assert all(0 <= r[k] <= 100 for r in report["rows"] for k in ("base", "edited"))
    assert report["rows"][0]["base"] != report["rows"][0]["edited"]  # the edit changed the van Gogh images
    assert load_manifest(erased_tiny_sd)["scores"]["clip"]["metric"] == "CLIP score"
    assert (tmp_path / "r" / "grid_kept.png").is_file() and not (tmp_path / "r" / "grid_paraphrase.png").exists()
