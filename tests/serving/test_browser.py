"""The review page in a real browser: ``esd-sdk serve --model <tiny erase> --compare`` on loopback,
Debian's chromium (headless) driven by playwright. The page must show an error for an empty
prompt, then, after a prompt and Enter, the base and the edited images from the same seeds, at
the model's size, different where the concept was erased. A screenshot is kept as an artifact
(in $ESD_TEST_ARTIFACTS, else pytest's temporary directory; the test prints its path).

Skipped, with the reason, where playwright or chromium is not installed (`.ci/run` installs
chromium where it can). No browser download: playwright drives the system's chromium.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no chromium at {CHROMIUM}: apt-get install chromium to run the browser test")


# What an eval of the toy writes into esd.json (the tiny model has no judge): the page shows what the manifest holds.
SCORES = {"toy_judge": {"metric": "toy judge rate", "erased": 0.0, "erased_base": 1.0, "paraphrase": 0.0625,
                        "paraphrase_base": 1.0, "kept": 0.875, "kept_base": 1.0, "max_kept_drop": 0.375,
                        "kept_shows_erased": 0.125, "kept_shows_erased_base": 0.0, "kept_colour": 0.75,
                        "kept_colour_base": 0.9375, "protocol": {"is_rate": True}}}


@pytest.fixture(scope="module")
def review(edited, tmp_path_factory):
    """(url, page): the server started first, the browser launched while the server loads; it serves a
    copy of the tiny erase with SCORES recorded in its manifest."""
    from esd_sdk.artifact import update_manifest

    scored = Path(shutil.copytree(edited, tmp_path_factory.mktemp("review") / "edited"))
    update_manifest(scored, SCORES)
    server = subprocess.Popen([sys.executable, "-m", "esd_sdk", "serve", "--model", str(scored), "--compare",
                               "--port", "0", "--no-warmup", "--max-wait-ms", "50"],
                              stderr=subprocess.PIPE, text=True)
    profile = tempfile.mkdtemp(dir=tmp_path_factory.mktemp("chromium"))
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                       viewport={"width": 1100, "height": 800})
        try:
            url = None
            for line in server.stderr:
                match = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
                if match:
                    url = match.group(1)
                    break
            assert url, f"esd-sdk serve did not start (exit code {server.poll()})"
            yield url, browser.new_page()
        finally:
            browser.close()
            server.terminate()  # SIGTERM: drains and exits 0
            assert server.wait(60) == 0


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")) / 255


def test_review_page_shows_base_and_edited_side_by_side(review, tmp_path):
    url, page = review
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")
    assert "base vs edited" in page.inner_text("#model") and "circle" in page.inner_text("#summary")
    scores = page.inner_text("table[data-scores=toy_judge]")  # base, then edited
    assert "kept\t100.0%\t87.5%" in scores and "kept prompts drawing it\t0.0%\t12.5%" in scores, scores
    assert "kept in the colour asked\t93.8%\t75.0%" in scores, scores

    page.fill("#prompt", "")  # an empty prompt: the server's 400, as a readable message
    page.click("#generate")
    page.wait_for_selector("#results[data-state=error]")
    assert page.inner_text("#error") == "The server refused the request: prompt must be a non-empty string"

    page.fill("#prompt", "a red circle")
    page.fill("#seed", "5")
    page.fill("#steps", "2")
    page.fill("#count", "2")
    page.press("#prompt", "Enter")  # the keyboard generates
    page.wait_for_selector("#results[data-state=done]", timeout=60_000)
    assert page.is_hidden("#error")
    shown = page.eval_on_selector_all("img[data-variant]", """images => images.map(i => ({
        variant: i.dataset.variant, seed: Number(i.dataset.seed), src: i.src, width: i.naturalWidth}))""")
    assert sorted((s["variant"], s["seed"]) for s in shown) == [("base", 5), ("base", 6), ("edited", 5), ("edited", 6)]
    images = {(s["variant"], s["seed"]): _decode(s["src"]) for s in shown}
    assert all(s["width"] == 32 for s in shown) and all(im.shape == (32, 32, 3) for im in images.values())
    for seed in (5, 6):  # the same seed, the two models: the erase shows (a short erase of a tiny random
        # model changes images by about two 8-bit levels on average; the same model twice gives 0)
        assert np.abs(images["base", seed] - images["edited", seed]).mean() > 2e-3
    for variant in ("base", "edited"):
        latency = page.inner_text(f"[data-variant={variant}] .latency")
        assert re.fullmatch(r"\d+ ms · model \d+ ms \(batch of \d\)", latency)

    artifacts = Path(os.environ.get("ESD_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=artifacts / "review_page.png", full_page=True)
    print(f"screenshot: {artifacts / 'review_page.png'}")
