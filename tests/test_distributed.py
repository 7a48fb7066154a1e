"""Data-parallel ESD with accelerate: 2 CPU processes (gloo) against one process with the same global batch."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from esd_sdk import load_base
from esd_sdk.artifact import load_edited_unet, partial_dir
from esd_sdk.config import EraseConfig
from esd_sdk.errors import ConfigError
from esd_sdk.training import _Trainer, train
from esd_sdk.distributed import Processes, free_port

# Two concepts and reused trajectories: the checkpoint gathers each process's slice of them.
SETTINGS = dict(concepts=["circle", "square"], method="x", lr=1e-3, ddim_steps=4, regenerate_every=2)
ARGS = ["--concept", "circle", "--concept", "square", "--method", "x", "--lr", "1e-3", "--ddim-steps", "4",
        "--regenerate-every", "2", "--batch-size", "1", "--checkpoint-every", "1", "-q"]


def _rank_process(launcher: subprocess.Popen, rank: int, timeout: float = 180) -> psutil.Process:
    """The worker process of ``rank`` among the launcher's descendants."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "esd_sdk" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.05)
    raise AssertionError(f"no rank {rank} process")


def test_two_processes_match_one_with_the_same_global_batch_and_resume_after_ctrl_c(tiny_sd, tmp_path):
    out = tmp_path / "edit"
    state_json = partial_dir(out) / "checkpoint" / "state.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 1. `esd-sdk erase --processes 2`; Ctrl-C on rank 1 alone once a checkpoint exists
    launcher = subprocess.Popen([sys.executable, "-m", "esd_sdk", "erase", "--model", str(tiny_sd), "--out", str(out),
                                 "--processes", "2", "--steps", "100000", *ARGS],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rank1 = _rank_process(launcher, 1)
        end = time.monotonic() + 180
        while not state_json.exists() and time.monotonic() < end and launcher.poll() is None:
            time.sleep(0.02)
        rank1.send_signal(signal.SIGINT)
        log, _ = launcher.communicate(timeout=180)
    finally:
        launcher.kill()
    assert launcher.returncode != 0 and not out.exists()
    stopped = json.loads(state_json.read_text())["step"]
    # the processes stopped after the step whose checkpoint rank 0 wrote (a process that stopped at
    # another step would have left the others waiting in the next all-reduce)
    reported = re.findall(r"interrupted at step (\d+)/100000", log)
    assert reported and set(reported) == {str(stopped)}, log
    assert 1 <= stopped < 100000 and json.loads(state_json.read_text())["processes"] == 2

    # 2. resume with `accelerate launch -m esd_sdk erase`, two more steps
    steps = stopped + 2
    resumed = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                              "--main_process_port", str(free_port()), "-m", "esd_sdk", "erase", "--model", str(tiny_sd),
                              "--out", str(out), "--steps", str(steps), "--resume", *ARGS],
                             env=env, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("wrote") == 1  # rank 0 reports (and writes); rank 1 does not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit"]  # no partial dir, no stray temporary
    manifest = json.loads((out / "esd.json").read_text())
    assert manifest["training"]["processes"] == 2 and manifest["training"]["global_batch"] == 2

    # 3. one process with batch 2 takes the same steps
    single = train(load_base(tiny_sd), EraseConfig(**SETTINGS, batch_size=2, steps=steps), progress=False)
    assert manifest["training"]["final_loss"] == pytest.approx(single.losses[-1], rel=1e-4)
    edited = dict(load_edited_unet(out).named_parameters())
    # gloo's all-reduce sums in another order than one process: 4.7-5.6e-6 on 2 of 1024 elements on an
    # AVX-512 EPYC (at 5e3de09 too), next to Adam steps of ~1e-3 a step
    for name in single.selection.tensors:
        torch.testing.assert_close(edited[name], dict(single.unet.named_parameters())[name], rtol=1e-4, atol=2e-5)


def test_robust_esd_refuses_several_processes(tiny_sd):
    base = load_base(tiny_sd)
    with pytest.raises(ConfigError, match="robust ESD runs in one process"):
        _Trainer(base, base.unet, EraseConfig(concepts=["circle"], robust=True), torch.device("cpu"), None,
                 Processes(rank=0, world=2))
