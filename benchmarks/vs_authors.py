"""esd-sdk against the ESD authors' own script, side by side: time to the same erasure.

    python benchmarks/vs_authors.py                       # toy model, ESD-u "circle", judged erasure
    python benchmarks/vs_authors.py --model mid --authors-iterations 8   # random 51M UNet: loss curves, s/step

The baseline is `esd_sd.py` from the authors' repository (rohitgandikota/erasing, MIT), run
unchanged from the peer tree (`--peer`, default ../shared/peer/erasing; without it the benchmark
prints why and exits 0). Its script hard-wires the hub id CompVis/stable-diffusion-v1-4, 1024 px
and CUDA; a child process redirects those from outside before running it with `runpy`:
`from_pretrained` maps the hub id to the local model, the sampling call gets the model's own size,
`--device cpu` is passed. Its `tqdm` is replaced by a clock that notes when each iteration starts
(and, on the toy, copies the weights the script has changed at the checkpoints; that time is not
counted). Python's and torch's RNGs are seeded for it (the script draws t_enc and seeds unseeded).

esd-sdk runs in its own child process through its trainer, under the same clock. Each child uses
one torch thread, and the runs alternate (authors, esd-sdk configurations, authors, ...) so that
load from other work on the machine hits both alike.

Time is wall-clock from after the library imports: loading the model, encoding the prompts and
the optimisation steps (what a user waits for), minus the checkpoint copies.

Toy model (`--model toy`): "the same erasure" is the judge's (esd_sdk.evaluate machinery: the
same prompts, seeds and sampler as `esd-sdk eval`): erased rate on "a <colour> <concept>" and
kept rate on every other object. Each run's checkpoints give an erasure-against-time curve. The
target is the authors' erasure at the end of their run (or --target-erased); each side's time
to it is that of its first checkpoint whose erased rate is at most the target and whose kept rate
is at least the authors' there minus --kept-tolerance. The ratio is authors' time / esd-sdk's.

Random SD-layout models (`--model tiny|mid`): no judge can score them, so the report compares
the loss curves (the same ESD loss: the authors' negative_guidance 2 is the paper's eta 1) and
the time per step.

Results: --out/vs_authors_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEER = ROOT.parent / "shared" / "peer" / "erasing"
HUB_ID = "CompVis/stable-diffusion-v1-4"  # what the authors' script loads; redirected to --model

# esd-sdk configurations (EraseConfig settings on top of the common ones below). "same" runs the
# authors' algorithm: 50 DDIM steps, one trajectory per step from the frozen model, bf16. The
# others add the levers one at a time.
CONFIGS = {
    "same": {},
    "ddim10": {"ddim_steps": 10},
    "ddim10-k4": {"ddim_steps": 10, "regenerate_every": 4},
    "ddim10-k4-b4": {"ddim_steps": 10, "regenerate_every": 4, "batch_size": 4},
    # What `esd-sdk erase --model toy` runs: the toy defaults of the erased method
    # (esd_sdk.config.toy_defaults, filled in by `config_settings`), fp32, trajectories from the
    # model being edited; "-k4" adds amortised trajectories.
    "toy-defaults": {"toy_defaults": True, "sampler": "edited", "precision": "fp32"},
    "toy-defaults-k4": {"toy_defaults": True, "sampler": "edited", "precision": "fp32", "regenerate_every": 4},
}


def config_settings(name: str, method: str) -> dict:
    """The EraseConfig settings of configuration ``name`` (the toy defaults resolved for ``method``)."""
    from esd_sdk.config import toy_defaults

    settings = dict(CONFIGS[name])
    if settings.pop("toy_defaults", False):  # its steps stay the run's own (--steps)
        settings = {**{k: v for k, v in toy_defaults(method).items() if k != "steps"}, **settings}
    return settings


# ------------------------------------------------------------------------------ the peer tree

def find_peer(peer: Path) -> str | None:
    """Why the authors' script cannot run from ``peer``, or None when it can."""
    if not peer.is_dir():
        return f"peer tree {peer} is absent: it holds the authors' esd_sd.py (see ../shared/peer/README.md)"
    missing = [p for p in ("esd_sd.py", "utils/sd_utils.py") if not (peer / p).is_file()]
    if missing:
        return f"peer tree {peer} lacks {', '.join(missing)}: it must be rohitgandikota/erasing's tree"
    return None


# ------------------------------------------------------------------------------ the clock

class Clock:
    """Wall-clock since `start`, minus the pauses (checkpoint copies), with a mark per step."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.paused = 0.0
        self.marks: list[float] = []  # elapsed time at the start of each step, and at the end

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.paused

    def mark(self) -> None:
        self.marks.append(self.elapsed())

    def pause(self):
        clock = self

        class _Pause:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                clock.paused += time.perf_counter() - self.t

        return _Pause()


def checkpoint_steps(total: int, every: int) -> list[int]:
    """Steps after which the weights are kept for judging: every ``every`` and the last."""
    return sorted({*range(every, total, every), total}) if every else [total]


# ------------------------------------------------------------------------------ children

def _save_snapshot(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({n: t.detach().float().contiguous().cpu() for n, t in tensors.items()}, str(path))


def authors_child(args) -> dict:
    """Run the authors' esd_sd.py unchanged, with the hub id, size and tqdm redirected."""
    import random
    import runpy

    import diffusers
    import torch
    import tqdm.auto
    from safetensors.torch import load_file  # noqa: F401  (imported before the clock, like theirs)

    sys.path.insert(0, str(args.peer))
    import utils.sd_utils as sd_utils  # the authors' module: patched call, unchanged code

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    work = Path(args.work)
    unets: list = []

    def local(original):
        def from_pretrained(model_id, *a, **k):
            obj = original(args.model_dir if model_id == HUB_ID else model_id, *a, **k)
            if isinstance(obj, diffusers.UNet2DConditionModel):
                unets.append(obj)
            return obj
        return from_pretrained

    diffusers.UNet2DConditionModel.from_pretrained = local(diffusers.UNet2DConditionModel.from_pretrained)
    diffusers.StableDiffusionPipeline.from_pretrained = local(diffusers.StableDiffusionPipeline.from_pretrained)

    their_call = sd_utils.esd_sd_call

    def model_size_call(self, *a, height=None, width=None, **k):  # their 1024 px -> the model's own size
        return their_call(self, *a, height=args.resolution, width=args.resolution, **k)

    sd_utils.esd_sd_call = model_size_call

    def esd_unet():  # their load order: the frozen UNet, then the one they train
        return unets[1]

    keep = set(checkpoint_steps(args.iterations, args.checkpoint_every)) if args.judge else set()
    snapshots: list[dict] = []
    clock = Clock()

    class ClockedTqdm(tqdm.auto.tqdm):
        def __init__(self, *a, **k):
            self.training = k.get("desc") == "Training ESD"
            super().__init__(*a, **({**k, "disable": True} if self.training else k))

        def __iter__(self):
            if not self.training:
                yield from super().__iter__()
                return
            initial = None
            for i, item in enumerate(super().__iter__()):
                clock.mark()
                if i == 0:
                    with clock.pause():
                        initial = {n: p.detach().clone() for n, p in esd_unet().named_parameters()}
                else:
                    self._keep(i, initial)
                yield item
            clock.mark()
            self._keep(args.iterations, initial)

        def _keep(self, step, initial):
            if step not in keep:
                return
            with clock.pause():  # only the tensors the script has changed, as its own save would hold
                changed = {n: p for n, p in esd_unet().named_parameters() if not torch.equal(p, initial[n])}
                path = work / f"authors-{step}.safetensors"
                _save_snapshot(changed, path)
                snapshots.append({"step": step, "seconds": clock.elapsed(), "file": str(path)})

    tqdm.auto.tqdm = ClockedTqdm
    sys.argv = ["esd_sd.py", "--erase_concept", args.concept, "--train_method", f"esd-{args.method}",
                "--iterations", str(args.iterations), "--lr", str(args.authors_lr),
                "--num_inference_steps", str(args.ddim_steps), "--guidance_scale", str(args.guidance),
                "--negative_guidance", str(args.eta + 1),  # their 2 is the paper's eta = 1
                "--save_path", str(work / "authors-out"), "--device", args.device]
    clock.t0, clock.paused = time.perf_counter(), 0.0
    scope = runpy.run_path(str(args.peer / "esd_sd.py"), run_name="__main__")
    total = clock.elapsed()
    return {"losses": [float(v) for v in scope["losses"]], "marks": clock.marks, "seconds": total,
            "snapshots": snapshots}


def esd_child(args) -> dict:
    """Run esd-sdk's trainer for ``args.steps`` steps of configuration ``args.config``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline  # noqa: F401  (imports before the clock,
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401          like the authors' side)

    from esd_sdk import load_base
    from esd_sdk.config import EraseConfig
    from esd_sdk.training import _Trainer

    settings = dict(concepts=[args.concept], method=args.method, steps=args.steps, lr=args.lr,
                    ddim_steps=args.ddim_steps, sample_guidance=args.guidance, negative_guidance=args.eta,
                    sampler="frozen", precision="bf16", seed=args.seed, checkpoint_every=0)
    settings.update(json.loads(args.settings))
    keep = set(checkpoint_steps(args.steps, args.checkpoint_every)) if args.judge else set()
    clock = Clock()
    base = load_base(args.model_dir)
    trainer = _Trainer(base, base.unet, EraseConfig(**settings).validate(), torch.device(args.device), None)
    snapshots = []
    for step in range(1, args.steps + 1):
        clock.mark()
        trainer.train_step()
        if step in keep:
            with clock.pause():
                path = Path(args.work) / f"esd-{args.name}-{step}.safetensors"
                _save_snapshot(trainer.trained, path)
                snapshots.append({"step": step, "seconds": clock.elapsed(), "file": str(path)})
    clock.mark()
    trainer.release()
    return {"losses": trainer.losses, "marks": clock.marks, "seconds": clock.elapsed(), "snapshots": snapshots,
            "settings": settings}


def run_child(args, kind: str, **extra) -> dict:
    """One run in a fresh process with one torch thread; returns its report."""
    out = Path(args.work) / f"child-{time.monotonic_ns()}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--result", str(out)]
    flags = {a.dest: a.option_strings[0] for a in parser()._actions if a.option_strings}
    for k, v in {**vars(args), "steps": None, **extra}.items():
        if k in CHILD_ARGS and v is not None:
            cmd += [flags[k], str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=args.work)
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{kind} run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(out.read_text())


def wait_for(path: Path, timeout_s: float = 3 * 3600) -> dict:
    """The report of a run started elsewhere (same settings), once it has finished."""
    t0 = time.monotonic()
    while not path.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"no authors' result at {path} after {timeout_s:.0f} s")
        time.sleep(10)
    return json.loads(path.read_text())


CHILD_ARGS = {"device", "model_dir", "peer", "work", "concept", "method", "iterations", "authors_lr", "ddim_steps", "guidance",
              "eta", "resolution", "seed", "checkpoint_every", "judge", "steps", "lr", "settings", "name"}


# ------------------------------------------------------------------------------ judging

class Judge:
    """The toy judge over `esd-sdk eval`'s prompt sets and sampler (erased and kept sets)."""

    def __init__(self, concept: str, n: int, device: str = "cpu"):
        from esd_sdk import load_base
        from esd_sdk.evaluate import measure, sampler_config, scoring_plan

        base = load_base("toy")
        base.pipeline.to(device)
        self.plan = scoring_plan({}, base, [concept], None, None, None, 0, {})
        self.plan.sets.pop("paraphrase", None)
        self.config = sampler_config(self.plan.base, None, None)
        self.n = n
        self.base = self._rates(measure(self.plan.base, self.plan.sets, self.plan.scorer, n, self.config))

    @staticmethod
    def _rates(m) -> dict:
        import numpy as np

        return {s: float(np.mean([v for vals in m.values[s].values() for v in vals])) for s in m.values}

    def __call__(self, snapshot: str) -> dict:
        import copy

        import torch
        from safetensors.torch import load_file

        from esd_sdk.evaluate import measure

        unet = copy.deepcopy(self.plan.base.unet)
        state = unet.state_dict()
        for name, value in load_file(snapshot).items():
            state[name].copy_(value.to(state[name].dtype))
        with torch.no_grad():
            return self._rates(measure(self.plan.base, self.plan.sets, self.plan.scorer, self.n, self.config, unet=unet))


# ------------------------------------------------------------------------------ equal erasure

@dataclass
class Point:
    seconds: float
    erased: float
    kept: float
    step: int = 0


def time_to(curve: list[Point], erased: float, kept_floor: float) -> float | None:
    """Seconds to the first point with erased rate <= ``erased`` and kept rate >= ``kept_floor``."""
    for p in sorted(curve, key=lambda p: p.seconds):
        if p.erased <= erased + 1e-9 and p.kept >= kept_floor - 1e-9:
            return p.seconds
    return None


def equal_erasure(authors: list[Point], ours: list[Point], target: float | None = None,
                  kept_tolerance: float = 0.05) -> dict:
    """The time each side takes to the same erasure, and their ratio (authors / ours).

    The target erased rate is ``target`` or the authors' at the end of their run; the kept floor
    is the authors' kept rate where they reach it, minus ``kept_tolerance``. When esd-sdk never
    gets there the ratio is None; when the authors never do, it is a lower bound (their whole run).
    """
    end = max(authors, key=lambda p: p.seconds)
    target = end.erased if target is None else target
    t_authors = time_to(authors, target, 0.0)
    reached = t_authors is not None
    if t_authors == 0.0:  # the base model (the point at 0 s) already meets it: nothing to compare
        return {"target_erased": target, "kept_floor": None, "authors_s": 0.0, "authors_reached": True,
                "esd_sdk_s": None, "ratio": None, "ratio_is_lower_bound": False,
                "why": "the target is no lower than the base model's erased rate: the authors' run erased nothing"}
    at = next((p for p in authors if p.seconds == t_authors), end)
    floor = at.kept - kept_tolerance
    t_ours = time_to(ours, target, floor)
    seconds_authors = t_authors if reached else end.seconds
    return {"target_erased": target, "kept_floor": floor, "authors_s": seconds_authors, "authors_reached": reached,
            "esd_sdk_s": t_ours, "ratio": None if t_ours is None else seconds_authors / t_ours,
            "ratio_is_lower_bound": t_ours is not None and not reached}


# ------------------------------------------------------------------------------ the run

def step_times(marks: list[float]) -> list[float]:
    return [b - a for a, b in zip(marks, marks[1:])]


def summarise(run: dict) -> dict:
    steps = step_times(run["marks"])
    return {"seconds": run["seconds"], "setup_s": run["marks"][0] if run["marks"] else None,
            "steps": len(steps), "s_per_step_mean": statistics.fmean(steps) if steps else None,
            "loss_first10": statistics.fmean(run["losses"][:10]) if run["losses"] else None,
            "loss_last10": statistics.fmean(run["losses"][-10:]) if run["losses"] else None}


def run(args) -> dict:
    """All repetitions, interleaved, then the judge over every checkpoint (toy)."""
    configs = {name: config_settings(name, args.method) for name in args.configs}
    reps = []
    for r in range(args.repeats):
        seed = args.seed + r
        rep = {"seed": seed, "authors": None, "esd_sdk": {}}
        order = ["authors", *configs] if r % 2 == 0 and not args.reuse else [*configs, "authors"]
        for who in order:
            if who in args.reuse:
                got = wait_for(args.reuse[who])
            elif who == "authors":
                got = run_child(args, "authors", seed=seed)
            else:
                got = run_child(args, "esd", seed=seed, name=f"{who}-{r}", settings=json.dumps(configs[who]),
                                steps=args.steps.get(who, args.iterations), lr=args.lr)
            if who == "authors":
                rep["authors"] = got
            else:
                rep["esd_sdk"][who] = got
            print(f"rep {r} {who}: {got['seconds']:.1f}s, loss {summarise(got)['loss_last10']:.4g} "
                  f"(last 10 steps)", flush=True)
        reps.append(rep)

    report = {"model": args.model, "concept": args.concept, "method": args.method, "repeats": args.repeats,
              "authors_settings": {"iterations": args.iterations, "lr": args.authors_lr, "num_inference_steps": args.ddim_steps,
                                   "guidance_scale": args.guidance, "negative_guidance": args.eta + 1,
                                   "precision": "bf16 weights (their script)"},
              "esd_sdk_common": {"lr": args.lr, "sampler": "frozen", "precision": "bf16 autocast, fp32 masters",
                                 "eta": args.eta, "sample_guidance": args.guidance},
              "configs": {name: {**configs[name], "steps": args.steps.get(name, args.iterations)} for name in configs},
              "reused": {who: str(path) for who, path in args.reuse.items()},
              "threads_per_side": 1, "device": args.device, "torch": __import__("torch").__version__, "runs": []}
    judge = Judge(args.concept, args.n, args.device) if args.judge else None
    if judge:
        report["judge"] = {"n_per_prompt": args.n, "base": judge.base, "sets": ["erased", "kept"]}
    for rep in reps:
        entry = {"seed": rep["seed"], "authors": summarise(rep["authors"]), "esd_sdk": {}}
        if judge:
            curve_a = _curve(rep["authors"], judge)
            entry["authors"]["curve"] = [p.__dict__ for p in curve_a]
        entry["authors"]["losses"] = rep["authors"]["losses"]
        for name, got in rep["esd_sdk"].items():
            e = {**summarise(got), "losses": got["losses"]}
            e["time_per_step_ratio"] = entry["authors"]["s_per_step_mean"] / e["s_per_step_mean"]
            if judge:
                curve = _curve(got, judge)
                e["curve"] = [p.__dict__ for p in curve]
                e["equal_erasure"] = equal_erasure(curve_a, curve, args.target_erased, args.kept_tolerance)
                # and the authors' best erasure (their lowest erased rate at any checkpoint)
                best = min(p.erased for p in curve_a[1:])
                e["equal_erasure_best"] = equal_erasure(curve_a, curve, best, args.kept_tolerance)
                print(f"seed {rep['seed']} {name}: {e['equal_erasure']}", flush=True)
            entry["esd_sdk"][name] = e
        report["runs"].append(entry)
    report["summary"] = _summary(report)
    return report


def _curve(run: dict, judge: Judge) -> list[Point]:
    points = [Point(0.0, judge.base["erased"], judge.base["kept"])]
    for s in run["snapshots"]:
        t0 = time.perf_counter()
        rates = judge(s["file"])
        print(f"judged {Path(s['file']).name}: erased {rates['erased']:.3f} kept {rates['kept']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        points.append(Point(s["seconds"], rates["erased"], rates["kept"], s["step"]))
    return points


def _summary(report: dict) -> dict:
    out = {}
    for name in report["configs"]:
        entries = [r["esd_sdk"][name] for r in report["runs"]]
        s = {"time_per_step_ratio_median": statistics.median(e["time_per_step_ratio"] for e in entries),
             "s_per_step_median": statistics.median(e["s_per_step_mean"] for e in entries),
             "authors_s_per_step_median": statistics.median(r["authors"]["s_per_step_mean"] for r in report["runs"])}
        if "equal_erasure" in entries[0]:
            ratios = [e["equal_erasure"]["ratio"] for e in entries]
            s["equal_erasure_ratios"] = ratios
            s["equal_erasure_ratio_median"] = statistics.median(ratios) if None not in ratios else None
            best = [e["equal_erasure_best"]["ratio"] for e in entries]
            s["equal_erasure_best_ratios"] = best
            s["equal_erasure_best_ratio_median"] = statistics.median(best) if None not in best else None
            s["final_erased"] = [e["curve"][-1]["erased"] for e in entries]
            s["final_kept"] = [e["curve"][-1]["kept"] for e in entries]
        out[name] = s
    return out


def markdown(report: dict) -> str:
    a = report["authors_settings"]
    lines = [f"{report['model']} model, ESD-{report['method']} \"{report['concept']}\", {report['repeats']} interleaved "
             f"repetition(s), 1 torch thread per side. Authors: {a['iterations']} iterations, lr {a['lr']}, "
             f"{a['num_inference_steps']} DDIM steps, bf16 weights."
             + (f" Runs reused from an earlier invocation (--reuse): {', '.join(report['reused'])}." if report.get("reused") else ""),
             ""]
    judged = "judge" in report
    head = "| esd-sdk configuration | steps | s/step esd-sdk / authors | per-step speed-up |"
    if judged:
        head += " erased / kept at the end (esd-sdk) | erased / kept at the end (authors) | time to the authors' erasure, authors / esd-sdk | ratio | the same for the authors' best erasure | ratio |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for name, s in report["summary"].items():
        cfg = report["configs"][name]
        settings = ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "steps") or "authors' algorithm"
        row = (f"| {name} ({settings}) | {cfg['steps']} | {s['s_per_step_median']:.3f} / {s['authors_s_per_step_median']:.3f} | "
               f"{s['time_per_step_ratio_median']:.2f}× |")
        if judged:
            runs = report["runs"]
            ee = [r["esd_sdk"][name]["equal_erasure"] for r in runs]
            fin = [r["esd_sdk"][name]["curve"][-1] for r in runs]
            fin_a = [r["authors"]["curve"][-1] for r in runs]
            pct = lambda v: f"{100 * v:.0f}%"  # noqa: E731
            row += (f" {' ; '.join(pct(f['erased']) + ' / ' + pct(f['kept']) for f in fin)} |"
                    f" {' ; '.join(pct(f['erased']) + ' / ' + pct(f['kept']) for f in fin_a)} |"
                    f" {' ; '.join(_fmt_s(e['authors_s']) + ' / ' + _fmt_s(e['esd_sdk_s']) for e in ee)} |"
                    f" **{' ; '.join(_fmt_ratio(e) for e in ee)}** |")
            eb = [r["esd_sdk"][name]["equal_erasure_best"] for r in runs]
            row += (f" {' ; '.join(pct(e['target_erased']) + ': ' + _fmt_s(e['authors_s']) + ' / ' + _fmt_s(e['esd_sdk_s']) for e in eb)} |"
                    f" **{' ; '.join(_fmt_ratio(e) for e in eb)}** |")
        lines.append(row)
    if judged:
        base = report["judge"]["base"]
        lines += ["", f"Judge: {report['judge']['n_per_prompt']} images per prompt; base model erased {100 * base['erased']:.0f}%, "
                  f"kept {100 * base['kept']:.0f}%. Target: the authors' erased rate at the end of their run (or their "
                  "best: the lowest at any checkpoint), "
                  f"kept rate at least theirs minus {100 * report.get('kept_tolerance', 0.05):.0f} pts. "
                  "Values per repetition separated by ';'.", "",
                  "Erasure against time (step: seconds, erased / kept):", ""]
        for r in report["runs"]:
            sides = [("authors", r["authors"]["curve"])] + [(n, e["curve"]) for n, e in r["esd_sdk"].items()]
            for name, curve in sides:
                points = ", ".join(f"{p['step']}: {p['seconds']:.0f} s, {100 * p['erased']:.0f}% / {100 * p['kept']:.0f}%"
                                   for p in curve)
                lines.append(f"- seed {r['seed']}, {name}: {points}")
    return "\n".join(lines) + "\n"


def _fmt_s(v) -> str:
    return "never" if v is None else f"{v:.0f} s"


def _fmt_ratio(e: dict) -> str:
    if e["ratio"] is None:
        return "n/a (authors erased nothing)" if e.get("why") else "not reached"
    return f"{'≥ ' if e['ratio_is_lower_bound'] else ''}{e['ratio']:.1f}×"


# ------------------------------------------------------------------------------ CLI

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy", choices=["toy", "tiny", "mid"],
                   help="toy: the bundled model, judged; tiny/mid: random SD-layout UNets (esd_sdk.testing)")
    p.add_argument("--peer", type=Path, default=DEFAULT_PEER, help="the authors' tree [../shared/peer/erasing]")
    p.add_argument("--concept", default="circle")
    p.add_argument("--method", default="u", choices=["x", "u"], help="ESD-x or ESD-u (both sides)")
    p.add_argument("--authors-iterations", dest="iterations", type=int, default=200, help="the authors' iterations [200]")
    p.add_argument("--authors-lr", type=float, default=5e-4, help="the authors' learning rate (their default 5e-5) [5e-4]")
    p.add_argument("--lr", type=float, default=None, help="esd-sdk's learning rate [the authors']")
    p.add_argument("--config", dest="configs", action="append", choices=list(CONFIGS),
                   help=f"esd-sdk configurations to run [all: {', '.join(CONFIGS)}]")
    p.add_argument("--steps", action="append", default=[], metavar="CONFIG=N",
                   help="esd-sdk steps of a configuration [the authors' iterations], e.g. ddim10-k4-b4=100")
    p.add_argument("--ddim-steps", type=int, default=50, help="the authors' num_inference_steps and the esd-sdk base [50]")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance while sampling x_t [3]")
    p.add_argument("--eta", type=float, default=1.0, help="paper's eta (the authors' negative_guidance is eta + 1) [1]")
    p.add_argument("--resolution", type=int, default=None, help="image size of the trajectories [the model's]")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repetitions [1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device of both sides and the judge, e.g. cuda [cpu]")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between judged checkpoints [iterations/8]")
    p.add_argument("-n", type=int, default=8, help="judge images per prompt [8]")
    p.add_argument("--target-erased", type=float, default=None, help="erased rate to reach [the authors' at the end]")
    p.add_argument("--kept-tolerance", type=float, default=0.05, help="kept rate may fall this far below the authors' [0.05]")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_authors")
    p.add_argument("--reuse", action="append", default=[], metavar="WHO=FILE",
                   help="judge and report a run made earlier with the same settings instead of running it again "
                        "(WHO: authors or a configuration; FILE: that child's result, waited for until it appears); "
                        "one repetition")
    p.add_argument("--keep-work", type=Path, default=None, help="keep the runs' files here [a temporary directory]")
    # child processes
    p.add_argument("--child", choices=["authors", "esd"], help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--judge", type=lambda s: s == "True", default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--name", default="", help=argparse.SUPPRESS)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and fill the defaults that depend on other settings."""
    args = parser().parse_args(argv)
    args.configs = args.configs or list(CONFIGS)
    if args.child:
        args.steps = int(args.steps[0]) if args.steps else args.iterations
        return args
    steps = {}
    for item in args.steps:
        name, _, n = item.partition("=")
        if name not in CONFIGS or not n.isdigit() or int(n) <= 0:
            parser().error(f"--steps takes CONFIG=N with CONFIG one of {', '.join(CONFIGS)}, got '{item}'")
        steps[name] = int(n)
    args.steps = steps
    reuse = {}
    for item in args.reuse:
        who, _, path = item.partition("=")
        if who not in ("authors", *CONFIGS) or not path:
            parser().error(f"--reuse takes WHO=FILE with WHO authors or one of {', '.join(CONFIGS)}, got '{item}'")
        reuse[who] = Path(path)
    args.reuse = reuse
    if reuse and args.repeats != 1:
        parser().error("--reuse stands for the runs of one repetition: use --repeats 1")
    args.lr = args.lr or args.authors_lr
    args.judge = args.model == "toy"
    if args.checkpoint_every is None:
        args.checkpoint_every = max(1, args.iterations // 8)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.peer = Path(args.peer).resolve()
    if args.child:
        import torch

        torch.set_num_threads(1)
        report = authors_child(args) if args.child == "authors" else esd_child(args)
        args.result.write_text(json.dumps(report) + "\n")
        return 0
    why = find_peer(args.peer)
    if why:
        print(f"skipped: {why}")
        return 0

    import torch

    torch.set_num_threads(1)  # the judge, on a shared machine
    work = args.keep_work or Path(tempfile.mkdtemp(prefix="vs-authors-"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work.resolve())
    if args.model == "toy":
        from esd_sdk.loading import toy_model_path

        args.model_dir = str(toy_model_path())
    else:
        from esd_sdk.testing import build_random_sd, mid_unet_config

        args.model_dir = str(build_random_sd(work / "random", mid_unet_config() if args.model == "mid" else None))
    print(f"model {args.model_dir}, peer {args.peer}, work {work}", flush=True)
    report = run(args)
    report["kept_tolerance"] = args.kept_tolerance
    report["command"] = "python benchmarks/vs_authors.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"vs_authors_{args.model}"
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    md = markdown(report)
    Path(f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
