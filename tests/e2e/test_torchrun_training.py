"""Data-parallel training for real: torchrun with 2 CPU processes on the gloo backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from runs import ROOT

# Trains a small MLP on moons with the library's Trainer; every rank saves its final parameters.
WORKER = textwrap.dedent(
    """
    import sys
    from functools import partial
    from pathlib import Path

    import torch

    from diffusion.data import MoonsData
    from diffusion.runtime.distributed import DistributedContext, exit_process
    from diffusion.storage.file_manager import FileManager
    from diffusion.loggers import FileLogger, NullLogger
    from diffusion.methods import GaussianDiffusion
    from diffusion.models import MLP
    from diffusion.methods.schedules import cosine_betas
    from diffusion.runtime.seeding import seed_everything
    from diffusion.training.trainer import Trainer

    out = Path(sys.argv[1])
    dist = DistributedContext.from_environment("cpu")
    torch.manual_seed(0)  # identical initial weights on every rank
    model = MLP(hidden_dim=32, num_layers=2, time_embed_dim=16)
    seed_everything(100 + dist.rank)  # each rank draws its own timesteps and noise
    logger = FileLogger(out, console=False) if dist.is_main else NullLogger()
    trainer = Trainer(
        model, GaussianDiffusion(cosine_betas, num_timesteps=100, clip_denoised=False, default_solver="ddpm"), MoonsData(num_samples=1200),
        FileManager(out), logger, epochs=4, lr=2e-3, batch_size=64, device="cpu", progress=False,
        distributed=dist, accumulate_grad_batches=int(sys.argv[2]),
    )
    trainer.train()
    torch.save({"params": [p.detach() for p in model.parameters()], "val": trainer.state.val_losses,
                "steps": trainer.state.global_step}, out / f"rank{dist.rank}.pt")
    logger.close()
    dist.close()
    exit_process()  # a DDP rank skips finalisation (its docstring: PyTorch's exit race)
    """
)


def run_worker(tmp_path: Path, name: str, nproc: int, accumulate: int = 1) -> Path:
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if nproc > 1:  # --standalone: a free rendezvous port, so tests running side by side do not collide
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run([*launcher, str(script), str(out), str(accumulate)], env=env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def single_and_ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    return run_worker(tmp, "single", 1), run_worker(tmp, "ddp", 2)


def test_parameters_stay_identical_across_ranks(single_and_ddp):
    _, ddp = single_and_ddp
    rank0, rank1 = torch.load(ddp / "rank0.pt"), torch.load(ddp / "rank1.pt")
    assert rank0["steps"] == rank1["steps"] == 4 * (1080 // 64)  # same global batches, last partial one dropped
    for a, b in zip(rank0["params"], rank1["params"]):
        assert torch.equal(a, b)


def test_loss_curve_matches_single_process(single_and_ddp):
    single, ddp = single_and_ddp
    single_val, ddp_val = torch.load(single / "rank0.pt")["val"], torch.load(ddp / "rank0.pt")["val"]
    # Same global batch and data order; only the noise draws differ, so the curves agree statistically.
    for a, b in zip(single_val, ddp_val):
        assert abs(a - b) / a < 0.15, (single_val, ddp_val)
    assert ddp_val[-1] < ddp_val[0]


def test_only_rank_zero_writes(single_and_ddp):
    _, ddp = single_and_ddp
    assert (ddp / "checkpoints" / "last.pt").is_file()
    assert len((ddp / "metrics.jsonl").read_text().splitlines()) >= 4


# Imported by every Python process of the run (torchrun's agent and its ranks): a rank that reaches interpreter
# finalisation leaves a file behind, which exit_process (diffusion/runtime/distributed.py) must prevent.
FINALISATION_WITNESS = textwrap.dedent(
    """
    import atexit, os, pathlib

    if "RANK" in os.environ and "WITNESS_DIR" in os.environ:
        atexit.register(lambda: (pathlib.Path(os.environ["WITNESS_DIR"]) / f"rank{os.environ['RANK']}").touch())
    """
)


def test_torchrun_run_py_makes_one_run_directory(tmp_path):
    witness = tmp_path / "witness"
    witness.mkdir()
    (witness / "sitecustomize.py").write_text(FINALISATION_WITNESS)
    env = {**os.environ, "PYTHONPATH": f"{witness}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1",
           "WITNESS_DIR": str(witness)}
    args = ["experiment=moons_mlp", "trainer.epochs=1", "trainer.progress=false", "data.num_samples=600",
            "model.hidden_dim=16", "model.num_layers=1", "method.num_timesteps=20", "sampler.num_samples=16",
            "evaluator.num_samples=16", "trainer.device=cpu"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "run.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "last.pt").is_file()
    # Both ranks ended without interpreter finalisation, where PyTorch's gloo worker threads can abort a rank
    assert sorted(p.name for p in witness.iterdir() if p.name.startswith("rank")) == []
    assert "sampled 16" in result.stdout  # and rank 0 had sampled and flushed its output


def test_batch_not_divisible_by_world_size_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "run.py"), "experiment=moons_mlp", "trainer.batch_size=255",
                             "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    assert "error: trainer.batch_size=255" in result.stderr
    # torchrun prints its own summary of the failed workers; our processes print no traceback.
    ours = [f'File "{ROOT}/run.py"', f'File "{ROOT}/diffusion/']  # torchrun's own frames may live in a venv here
    assert not any(frame in result.stderr for frame in ours), result.stderr
