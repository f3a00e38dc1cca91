"""Per-sample noise streams: a sample depends on (sampler.seed, its index), not on the batch size or the number of
processes drawing it."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import ONE_EPOCH_MOONS, ROOT, child_env, ok, run_py
from torch import nn

from diffusion.data import MoonsData
from diffusion.evaluation.points import PointsEvaluator
from diffusion.loggers import FileLogger
from diffusion.methods import GaussianDiffusion
from diffusion.methods.schedules import cosine_betas
from diffusion.models import MLP
from diffusion.runtime.checks import ConfigError
from diffusion.sampling.sampler import SampleNoise, Sampler, sample_seed, save_samples
from diffusion.sampling.solvers import SOLVERS
from diffusion.tasks.sample_and_score import sample_save_score

NUM_SAMPLES = 300  # more than the largest batch, so every batch size splits the samples differently



def gaussian(solver: str) -> GaussianDiffusion:
    return GaussianDiffusion(cosine_betas, num_timesteps=20, clip_denoised=False, default_solver=solver)


STOCHASTIC = {
    "ddpm": (lambda: gaussian("ddpm"), {}),
    "ddim_eta1": (lambda: gaussian("ddim"), {"steps": 5, "eta": 1.0}),
    "heun_churn": (lambda: gaussian("heun"), {"steps": 4, "s_churn": 10.0}),
}


class Elementwise(nn.Module):
    """A network with no matrix product: each output element is a function of its own input element and t, so its
    float results cannot depend on how many rows a batch has (a BLAS matmul can: it picks other kernels for a
    7-row batch than for a 64-row one, and the MLP's samples then differ in the last bits)."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        label = 0 if y is None else y.float().reshape(-1, 1) / 10
        return torch.tanh(self.scale * x + t.float().reshape(-1, 1) / 20 + label)


def tiny_sampler(build, batch_size: int, num_classes: int = 0, network: str = "mlp", **kwargs) -> Sampler:
    torch.manual_seed(0)
    model = Elementwise(num_classes) if network == "elementwise" else MLP(hidden_dim=8, num_layers=1, time_embed_dim=8,
                                                                  num_classes=num_classes)
    return Sampler(model, build(), (2,), num_samples=NUM_SAMPLES, batch_size=batch_size, seed=5, device="cpu",
                   **kwargs)


def saved_arrays(sampler: Sampler, directory) -> dict[str, np.ndarray]:
    """The arrays of the ``samples.npz`` the sampler's samples make (not the file: the zip's timestamps vary)."""
    save_samples(sampler.sample(), directory)
    with np.load(directory / "samples.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.mark.parametrize(("network", "batch_sizes"), [("mlp", (64, 256)), ("elementwise", (64, 256, 7))])
@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_samples_npz_is_identical_for_every_batch_size(name, network, batch_sizes, tmp_path):
    build, options = STOCHASTIC[name]
    arrays = [saved_arrays(tiny_sampler(build, b, network=network, **options), tmp_path / str(b)) for b in batch_sizes]
    first = arrays[0]
    for other in arrays[1:]:
        assert other.keys() == first.keys()
        for key, array in other.items():
            assert array.dtype == first[key].dtype and array.shape == first[key].shape, key
            if network == "elementwise" or key != "samples":  # no matmul: bit for bit on any CPU
                assert array.tobytes() == first[key].tobytes(), key
                continue
            # The MLP's rows round alike in a 64- and a 256-row batch only where the GEMM's row blocking divides
            # both (it does here; another MKL code path, as on another CPU kind, rounds the rows of a partial
            # block apart): a few float32 ulps per matmul, <= 2e-7 x the samples' scale after the steps (measured
            # for 48-, 60- and 100-row batches with MKL_CBWR=COMPATIBLE and 2 threads). A sample drawn from another
            # noise stream is >= 1e-2 x scale away.
            scale = 1 + float(np.abs(first[key]).max())
            np.testing.assert_allclose(array, first[key], rtol=0, atol=1e-5 * scale, err_msg=key)
    samples = first["samples"]
    assert samples.dtype == np.float32 and np.isfinite(samples).all()
    assert len(np.unique(samples)) > NUM_SAMPLES  # distinct, real samples


def solver_iterates(name: str, rows: int, forced: list[torch.Tensor] | None = None
                    ) -> tuple[list[torch.Tensor], list[float]]:
    """The MLP's trajectory of samples 0..rows-1 under STOCHASTIC[name] (the Sampler's solver, grid and per-sample
    noise streams, one batch of ``rows``): x before each step, then the result. With ``forced`` (another run's
    iterates), each step starts from that run's x instead, and the second list holds each step's difference."""
    build, options = STOCHASTIC[name]
    sampler = tiny_sampler(build, rows, **options)
    solver, grid = SOLVERS[sampler.solver], sampler.grid()
    noise = SampleNoise(sampler.seed, range(rows), (2,))
    iterates, differences = [], []

    def callback(i: int, x: torch.Tensor) -> None:
        if forced is not None and i:
            differences.append((x - forced[i][:rows]).abs().max().item())
            x.copy_(forced[i][:rows])
        iterates.append(x.clone())

    denoise = lambda x, sigma: sampler.method.denoise(sampler.model, x, sigma)  # noqa: E731
    options = {key: sampler.solver_options[key] for key in solver.options}
    with torch.inference_mode():
        iterates.append(solver.function(denoise, noise() * grid.start_scale, grid.sigmas, noise, callback, **options))
    if forced is not None:
        differences.append((iterates[-1] - forced[-1][:rows]).abs().max().item())
    return iterates, differences


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_mlp_samples_at_batch_7_differ_only_by_matmul_rounding(name):
    """What holds on any CPU: the 7-row batch draws the same noise as the first rows of the 256-row one, and its
    trajectory differs only by the rounding of the MLP's matmul kernels (which may differ with the batch's row
    count): a single step from the same x differs at float32 rounding size, and the whole trajectory's difference
    is about the sum of those single-step differences, not an O(1) difference of a new noise stream."""
    small, large = (SampleNoise(5, range(rows), (2,)) for rows in (7, 256))
    for _ in range(3):  # the initial noise and two steps' noise
        assert torch.equal(small(), large()[:7])
    free, _ = solver_iterates(name, 7)
    reference, _ = solver_iterates(name, 256)
    _, one_step = solver_iterates(name, 7, forced=reference)
    scale = 1 + max(x.abs().max().item() for x in reference)
    assert max(one_step) <= 1e-5 * scale, one_step  # float32 rounding of one step (measured <= 2e-8 * scale)
    total = (free[-1] - reference[-1][:7]).abs().max().item()
    assert total <= 10 * sum(one_step) + 1e-7 * scale, (total, one_step)  # a new noise stream: O(1)


def test_labels_and_trajectory_follow_the_sample_index():
    build, options = STOCHASTIC["ddim_eta1"]
    results = [tiny_sampler(build, b, num_classes=3, network="elementwise", class_labels=[2, 0], **options).sample(
        record_timesteps=[16, 8, -1], trajectory_samples=10) for b in (4, 256)]
    small, large = results
    assert torch.equal(small.labels, large.labels) and small.labels[:4].tolist() == [2, 0, 2, 0]
    assert sorted(small.trajectory) == sorted(large.trajectory) == [-1, 8, 16]
    for t in small.trajectory:
        assert small.trajectory[t].shape == (10, 2)
        assert torch.equal(small.trajectory[t], large.trajectory[t])
    assert torch.equal(small.trajectory[-1], small.samples[:10])


def test_first_index_continues_the_same_streams():
    """Samples 100-199 drawn on their own equal the second hundred of one draw of 300 (disjoint sets per offset), bit
    for bit on the elementwise network, whose rows round alike in any batch. The MLP's need not: rows 164-199 form
    a 36-row batch here and lie inside 64-row batches in the whole draw, and a GEMM whose row blocking does not
    divide 36 (another MKL code path, as on another CPU kind) rounds them apart, by 5e-5 with MKL_CBWR=COMPATIBLE
    and 2 threads; test_mlp_samples_at_batch_7_differ_only_by_matmul_rounding bounds that rounding."""
    build, options = STOCHASTIC["ddpm"]
    sampler = tiny_sampler(build, 64, network="elementwise", **options)
    whole = sampler.sample().samples
    torch.testing.assert_close(sampler.sample(num_samples=100, first_index=100).samples, whole[100:200],
                               rtol=0, atol=0)


def test_each_sample_has_its_own_stream():
    noise = SampleNoise(0, range(4), (3,))
    first, second = noise(), noise()
    assert not torch.equal(first, second)  # a step's noise is new
    assert torch.equal(SampleNoise(0, [2], (3,))(), first[2:3])  # sample 2 alone draws the same
    assert len({sample_seed(s, i) for s in range(3) for i in range(3)}) == 9  # seed 0 index 1 != seed 1 index 0
    assert sample_seed(-1, 0) != sample_seed(1, 0)


# ---------------------------------------------------------------------------------------------------------
# evaluator.seeds: disjoint sample sets, mean / std / min
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seeds", "message"), [
    ([], "evaluator.seeds must be null or a list"),
    ("012", "evaluator.seeds must be null or a list"),
    ([0, -1], "evaluator.seeds"),
    ([1, 1], "evaluator.seeds must be distinct"),
])
def test_bad_seeds_are_one_line_errors_naming_the_key(seeds, message):
    with pytest.raises(ConfigError, match=message):
        PointsEvaluator(seeds=seeds)


def test_seeds_with_sampler_steps_score_every_step_count_on_every_set(tmp_path):
    """EDM2's reporting per step count: each row is the mean over the seeds' disjoint sets, with their std and min,
    in eval_steps.md and eval.json; the final scores are the last row's, not sampled again."""
    data = MoonsData(num_samples=300)
    evaluator = PointsEvaluator(num_samples=30, reference_size=200, num_projections=8, seeds=[0, 1, 2],
                                sampler_steps=[2, 5], floor_draws=4, bootstrap=0, floor_cache_dir=str(tmp_path))
    evaluator.prepare(data)
    build, _ = STOCHASTIC["ddim_eta1"]
    sampler = tiny_sampler(build, 16, eta=1.0)
    with FileLogger(tmp_path, console=False) as logger:
        values = sample_save_score(sampler, evaluator, data, tmp_path, logger)
    payload = json.loads((tmp_path / "eval.json").read_text())
    rows = payload["sampler_steps"]
    assert [row["steps"] for row in rows] == [2, 5] and payload["seeds"] == [0, 1, 2]
    for row in rows:
        per_seed = row["energy"]["per_seed"]
        assert len(set(per_seed)) == 3 and row["energy"]["value"] == pytest.approx(statistics.fmean(per_seed))
        assert row["energy"]["std_over_seeds"] == pytest.approx(statistics.stdev(per_seed))
        assert row["energy"]["min_over_seeds"] == min(per_seed)
    assert payload["energy"]["per_seed"] == rows[-1]["energy"]["per_seed"] and values["energy"] == rows[-1][
        "energy"]["value"]
    table = (tmp_path / "eval_steps.md").read_text()
    std, minimum = rows[0]["energy"]["std_over_seeds"], rows[0]["energy"]["min_over_seeds"]
    assert f"± {std:.4g}, min {minimum:.4g}" in table


def test_seeds_score_disjoint_sets_and_report_mean_std_min(tmp_path):
    data = MoonsData(num_samples=300)
    evaluator = PointsEvaluator(num_samples=40, reference_size=200, num_projections=16, seeds=[0, 1, 2])
    evaluator.prepare(data)
    build, options = STOCHASTIC["ddim_eta1"]
    sampler = tiny_sampler(build, 16, **options)
    sampler.num_samples = 40
    with FileLogger(tmp_path, console=False) as logger:
        values = sample_save_score(sampler, evaluator, data, tmp_path, logger)
    payload = json.loads((tmp_path / "eval.json").read_text())
    assert payload["seeds"] == [0, 1, 2]
    for name, entry in payload.items():
        if not isinstance(entry, dict):
            continue
        per_seed = entry["per_seed"]
        assert len(set(per_seed)) == 3  # three different sample sets
        assert entry["value"] == pytest.approx(statistics.fmean(per_seed)) == values[name]
        assert entry["std_over_seeds"] == pytest.approx(statistics.stdev(per_seed))
        assert entry["min_over_seeds"] == min(per_seed)
    # Seed 1's set is samples 40-79 of the same streams; the saved samples are seed 0's.
    second = sampler.sample(num_samples=40, first_index=40).samples
    assert payload["sliced_wasserstein"]["per_seed"][1] == pytest.approx(
        evaluator.evaluate(second)["sliced_wasserstein"].value)
    saved = np.load(tmp_path / "samples.npz")["samples"]
    assert np.array_equal(saved, sampler.sample(num_samples=40).samples.numpy())
    assert "| metric | seed 0 | seed 1 | seed 2 | mean | std | min | floor |" in (tmp_path / "train.log").read_text()


# ---------------------------------------------------------------------------------------------------------
# torchrun: 2 gloo processes write the samples.npz one process writes
# ---------------------------------------------------------------------------------------------------------
SAMPLING = ["sampler.num_samples=40", "sampler.batch_size=8", "sampler.device=cpu", "sampler.precision=fp32"]


def torchrun(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(ROOT / "run.py"), *overrides], cwd=cwd, env=child_env(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def npz_arrays(directory: Path) -> dict[str, bytes]:
    with np.load(directory / "samples.npz") as npz:
        return {name: npz[name].tobytes() for name in npz.files}


@pytest.mark.slow  # four run.py launches, two of them torchrun: about a minute on a busy machine
def test_torchrun_training_and_evaluation_sample_as_one_process(tmp_path):
    """Trained under torchrun (both ranks sample at the end), evaluated under torchrun with evaluator.seeds: each
    samples.npz equals the one a single process draws from the same checkpoint, bit for bit; one output folder."""
    run = tmp_path / "train"
    moons = [o for o in ONE_EPOCH_MOONS if not o.startswith("data.num_samples")] + ["data.num_samples=600"]
    torchrun(tmp_path, *moons, "evaluator=points", "evaluator.num_samples=40", "trainer.device=cpu",
             *SAMPLING, f"hydra.run.dir={run}")
    evaluate = ["task=evaluate", f"run_dir={run}", "evaluator=points", "evaluator.num_samples=40",
                "evaluator.seeds=[0,1]", *SAMPLING]
    ok(run_py(tmp_path, *evaluate, f"hydra.run.dir={tmp_path / 'one'}"))
    assert npz_arrays(run) == npz_arrays(tmp_path / "one")  # the training's final samples: same checkpoint, seed
    (tmp_path / "two").mkdir()
    torchrun(tmp_path / "two", *evaluate)  # Hydra's default output folders: one per rank, by the clock
    folders = [p for p in (tmp_path / "two" / "outputs").glob("*/*") if p.is_dir()]
    assert len(folders) == 1, folders  # rank 1's own Hydra folder is gone
    assert npz_arrays(folders[0]) == npz_arrays(tmp_path / "one")
    one, two = (json.loads((d / "eval.json").read_text()) for d in (tmp_path / "one", folders[0]))
    assert {k: v for k, v in one.items() if k != "seconds_per_sample"} == {
        k: v for k, v in two.items() if k != "seconds_per_sample"}


# Two ranks draw 2 batches of 4 each; the 10-sample trajectory strip spans both ranks' shares.
SAMPLER_WORKER = """
import sys
import torch
from diffusion.runtime.distributed import DistributedContext
from diffusion.sampling.sampler import Sampler
from test_seeded_sampling import Elementwise, gaussian

dist = DistributedContext.from_environment("cpu")
sampler = Sampler(Elementwise(num_classes=3), gaussian("ddim"), (2,),
                  num_samples=16, batch_size=4, steps=5, eta=1.0, seed=5, device="cpu", class_labels=[2, 0, 1],
                  distributed=dist)
result = sampler.sample(record_timesteps=[16, 8, -1], trajectory_samples=10)
if dist.is_main:
    torch.save({"samples": result.samples, "labels": result.labels, "trajectory": result.trajectory}, sys.argv[1])
dist.close()
"""


def test_two_ranks_gather_samples_labels_and_trajectory_in_sample_order(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(SAMPLER_WORKER)
    env = child_env(PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}:{Path(__file__).resolve().parent}")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"{nproc}.pt"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        done = subprocess.run([*launcher, str(script), str(out)], env=env, capture_output=True, text=True,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = torch.load(out)
    one, two = results[1], results[2]
    assert torch.equal(one["samples"], two["samples"]) and one["samples"].shape == (16, 2)
    assert torch.equal(one["labels"], two["labels"])
    assert sorted(two["trajectory"]) == [-1, 8, 16]
    for t, frames in one["trajectory"].items():
        assert frames.shape == (10, 2) and torch.equal(frames, two["trajectory"][t])
