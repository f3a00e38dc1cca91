"""The sampler owns the model and the one sampling loop: a solver (``sampler.solver``) steps the method's denoiser
down a grid of noise levels, batch by batch, with per-sample noise streams."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.methods.base import BaseMethod, vp_scale
from diffusion.methods.schedules import SPACINGS, TimestepSpacing
from diffusion.runtime.checks import ConfigError, check_bool, check_choice, check_float, check_int
from diffusion.runtime.devices import Precision, autocast, resolve_device, resolve_precision
from diffusion.runtime.distributed import DistributedContext
from diffusion.sampling.grids import Grid, build_grid
from diffusion.sampling.guidance import autoguided_output, guided_output
from diffusion.sampling.noise import SampleNoise, sample_seed
from diffusion.sampling.solvers import SOLVER_NAMES, FlowField, Solver, solver_for
from diffusion.storage import checkpoint
from diffusion.storage.export import load_exported
from diffusion.storage.file_manager import FileManager

__all__ = ["SampleNoise", "SampleResult", "Sampler", "sample_seed", "save_samples"]


class Decoder(Protocol):
    """Latents ``(B, *sample_shape)`` -> images ``(B, *image_shape)`` in [-1, 1] (a latent run's autoencoder)."""

    image_shape: tuple[int, ...]

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> Decoder: ...


@dataclass
class SampleResult:
    """Samples ``(N, *sample_shape)``, CPU float32, in the data's range; ``trajectory``: step label (-1: after the last)
    -> the first ``trajectory_samples`` there, on the VP scale x / sqrt(1 + sigma^2); ``nfe``: evaluations per sample.
    """

    samples: torch.Tensor
    steps: int
    labels: torch.Tensor | None = None
    trajectory: dict[int, torch.Tensor] = field(default_factory=dict)
    nfe: int = 0


SampleFormat = Literal["npz", "adm"]
SAMPLE_FORMATS = ("npz", "adm")  # samples.npz (float32, this project's) | the ADM suite's uint8 .npz


class Sampler:
    """Batched, seeded sampling from a trained model: ``method``'s denoiser D(x; sigma), stepped by ``solver``.

    ``model``, ``method`` and ``sample_shape`` come from the app; ``guide_model`` is the autoguidance network;
    ``distributed`` splits the samples over torchrun ranks; ``decoder`` (a latent run's autoencoder, with its
    ``image_shape``) turns each batch of latents into images before they are returned, so every caller (pictures,
    ``samples.npz``, evaluators) sees pixels. Other settings: see conf/sampler/default.yaml.

    Raises:
        ConfigError: for out-of-range arguments, naming their ``sampler.*`` key.
    """

    def __init__(
        self,
        model: nn.Module,
        method: BaseMethod,
        sample_shape: Sequence[int],
        *,
        solver: str | None = None,
        num_samples: int = 64,
        batch_size: int = 256,
        steps: int | None = None,
        eta: float = 0.0,
        timestep_spacing: TimestepSpacing = "leading",
        seed: int = 0,
        device: str = "auto",
        precision: Precision = "fp32",
        guidance_scale: float = 1.0,
        class_labels: Sequence[int] | Literal["all"] | None = None,
        grid_every_n_epochs: int | None = None,
        format: SampleFormat = "npz",
        progress: bool = False,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        diffusion: float = 1.0,
        guide: str | None = None,
        guide_model: nn.Module | None = None,
        guide_scale: float = 1.0,
        distributed: DistributedContext | None = None,
        decoder: Decoder | None = None,
    ) -> None:
        self.num_samples = check_int(num_samples, "sampler.num_samples", minimum=1)
        self.batch_size = check_int(batch_size, "sampler.batch_size", minimum=1)
        if steps is not None:
            check_int(steps, "sampler.steps", minimum=1, maximum=method.num_timesteps)
        self.steps = steps
        if solver is not None:
            check_choice(solver, "sampler.solver", SOLVER_NAMES)
        self.solver = method.check_solver(solver if solver is not None else method.default_solver)
        self.eta = check_float(eta, "sampler.eta", minimum=0.0)
        self.timestep_spacing: TimestepSpacing = check_choice(timestep_spacing, "sampler.timestep_spacing", SPACINGS)
        self.seed = check_int(seed, "sampler.seed")
        self.distributed = distributed or DistributedContext()
        self.device = self.distributed.device(resolve_device(device, "sampler.device"))  # cuda:<local rank>
        self.precision: Precision = resolve_precision(precision, self.device, "sampler.precision")
        self.model = model.to(self.device).eval()
        self.method = method.to(self.device)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.decoder = None if decoder is None else decoder.to(self.device)
        self.output_shape = self.sample_shape if decoder is None else tuple(decoder.image_shape)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.guidance_scale = check_float(guidance_scale, "sampler.guidance_scale")
        if self.num_classes == 0 and self.guidance_scale != 1.0:
            raise ConfigError(f"sampler.guidance_scale={guidance_scale} needs a class-conditional model "
                              "(model.num_classes > 0); leave it at 1 for an unconditional one")
        self.class_labels = self._check_labels(class_labels)
        every = grid_every_n_epochs
        self.grid_every_n_epochs = None if every is None else check_int(every, "sampler.grid_every_n_epochs", 1)
        self.format: SampleFormat = check_choice(format, "sampler.format", SAMPLE_FORMATS)
        if self.format == "adm" and len(self.sample_shape) != 3:
            raise ConfigError(f"sampler.format=adm writes images (N x H x W x C), but these samples have shape "
                              f"{list(self.sample_shape)}; use sampler.format=npz")
        self.progress = check_bool(progress, "sampler.progress")
        self._bar: Any = tqdm(disable=True)  # replaced by each sample() call
        self.rho = check_float(rho, "sampler.rho", minimum=0.0, inclusive=False)
        self.solver_options = {  # what each solver takes of them: SOLVERS[name].options
            "eta": self.eta,
            "s_churn": check_float(s_churn, "sampler.s_churn", minimum=0.0),
            "s_tmin": check_float(s_tmin, "sampler.s_tmin", minimum=0.0),
            "s_tmax": math.inf if s_tmax is None else check_float(s_tmax, "sampler.s_tmax", minimum=0.0),
            "s_noise": check_float(s_noise, "sampler.s_noise", minimum=0.0),
            "atol": check_float(atol, "sampler.atol", minimum=0.0, inclusive=False),
            "rtol": check_float(rtol, "sampler.rtol", minimum=0.0, inclusive=False),
            "diffusion": check_float(diffusion, "sampler.diffusion", minimum=0.0),
        }
        self._evaluations: list[int] = []  # network evaluations per sample of each batch (adaptive solvers)
        if guide is not None and guide_model is None:
            raise ConfigError(f"sampler.guide={guide!r}: the guide model was not loaded (pass guide_model=)")
        self.guide_model = None if guide_model is None else guide_model.to(self.device).eval()
        self.guide_scale = check_float(guide_scale, "sampler.guide_scale")
        self.grid()  # a solver without its grid (Karras sigmas at sigma_max = inf) fails here, before any work

    @property
    def name(self) -> str:
        """How eval.json and the logs name this sampler: ``ddim``, ``heun``, ``edm``, ``edm_euler``..."""
        return self.method.sampler_name(self.solver)

    @property
    def solver_entry(self) -> Solver:
        """The solver's function, grid and NFE for this method (:func:`~diffusion.sampling.solvers.solver_for`)."""
        return solver_for(self.solver, self.method.grids)

    def grid(self, steps: int | None = None) -> Grid:
        """The noise levels of a trajectory of ``steps`` steps (None: ``sampler.steps``, else the defaults)."""
        solver = self.solver_entry
        steps = steps if steps is not None else self.steps
        if solver.default_steps is None:  # ddpm: every level of the schedule
            steps = None
        elif steps is None:
            steps = self.method.default_steps(self.solver) or solver.default_steps
            steps = min(steps, self.method.num_timesteps) if solver.grid == "schedule" else steps
        return build_grid(self.method, solver.grid, steps, self.timestep_spacing, self.rho)

    def timesteps(self, steps: int | None = None) -> list[int]:
        """The labels of a trajectory's steps (schedule timesteps, or Karras step indices counted down)."""
        return self.grid(steps).labels

    def _check_labels(self, labels: Sequence[int] | str | None) -> list[int] | str | None:
        if labels is None:
            return None
        if self.num_classes == 0:
            raise ConfigError("sampler.class_labels needs a class-conditional model (model.num_classes > 0)")
        if labels == "all":
            return "all"
        if isinstance(labels, str) or not all(isinstance(c, int) and 0 <= c < self.num_classes for c in labels):
            raise ConfigError(f"sampler.class_labels must be 'all' or a list of classes in [0, {self.num_classes}), "
                              f"got {labels!r}")
        return list(labels)

    def grid_row_length(self, total: int) -> int | None:
        """Images per grid row: one row per class for ``class_labels=all``, else square-ish (None)."""
        return max(1, total // self.num_classes) if self.class_labels == "all" else None

    def labels_for(self, total: int) -> torch.Tensor | None:
        """The class of each of ``total`` samples (None if unconditional); ``all``: ``total // num_classes`` of each
        class, in class order.
        """
        if self.num_classes == 0:
            return None
        if self.class_labels == "all":
            per_class = max(1, total // self.num_classes)
            return torch.arange(total) // per_class % self.num_classes
        cycle = torch.tensor(self.class_labels or list(range(self.num_classes)))
        return cycle[torch.arange(total) % len(cycle)]

    def load_checkpoint(
        self, file_manager: FileManager, which: Literal["best", "last"] | str | Path = "best", use_ema: bool = True
    ) -> dict[str, Any]:
        """Load the (EMA) weights of a run's best checkpoint into the model; returns the checkpoint dict."""
        ckpt = file_manager.load(which, map_location=self.device)
        self.model.load_state_dict(checkpoint.weights(ckpt, use_ema))
        return ckpt

    def load_weights(self, path: str | Path) -> dict[str, Any]:
        """Load weights exported by ``task=export`` (a ``.safetensors`` file) into the model; returns the run
        config stored with them.

        Raises:
            CheckpointError: the file is missing, damaged or not an export of this project.
        """
        weights, config = load_exported(path)
        self.model.load_state_dict(weights)
        return config

    @torch.inference_mode()
    def sample(
        self,
        num_samples: int | None = None,
        record_timesteps: Sequence[int] = (),
        trajectory_samples: int = 8,
        first_index: int = 0,
    ) -> SampleResult:
        """Draw samples ``first_index`` .. ``first_index + num_samples - 1`` of this seed's streams, batch by batch,
        recording x_t at ``record_timesteps`` for the first ``trajectory_samples``. Under torchrun each rank draws its
        shard and rank 0 gets all of them in sample order, bit for bit what one process draws.
        """
        total = self.num_samples if num_samples is None else num_samples
        check_int(first_index, "first_index", minimum=0)
        grid = self.grid()
        labels = self.labels_for(total)
        share = self.distributed.shard(total, self.batch_size)
        chunks: list[torch.Tensor] = [torch.empty((0, *self.output_shape))]
        trajectory: dict[int, list[torch.Tensor]] = {}
        self._evaluations = []
        self._bar = self._progress_bar(len(range(share.start, share.stop, self.batch_size)), len(grid.labels), total)
        for start in range(share.start, share.stop, self.batch_size):
            stop = min(start + self.batch_size, share.stop)
            noise = SampleNoise(self.seed, range(first_index + start, first_index + stop), self.sample_shape,
                                self.device)
            recorded = max(0, min(stop, trajectory_samples) - start)  # rows of this batch in the strip
            y = None if labels is None else labels[start:stop].to(self.device)
            x = self._solve(grid, noise, y, record_timesteps if recorded else (), recorded, trajectory)
            chunks.append(self._decoded(x).float().cpu())
        self._bar.close()
        samples = torch.cat(chunks)
        frames = {t: self._decoded(torch.cat(xs)) for t, xs in trajectory.items()}
        if self.distributed.enabled:
            samples, frames = self._gather(samples, frames)
        own = labels if labels is None or self.distributed.is_main else labels[share.start : share.stop]
        return SampleResult(samples=samples, steps=len(grid.labels), labels=own, trajectory=frames,
                            nfe=self._nfe(len(grid.labels)))

    def _decoded(self, x: torch.Tensor) -> torch.Tensor:
        """Images of latents ``x`` (a latent run), or ``x`` itself; per sample, so the seeds still decide."""
        return x if self.decoder is None else self.decoder(x)

    def _nfe(self, steps: int) -> int:
        """Network evaluations per sample: the solver's count for ``steps``, or for an adaptive one the mean of
        what this process's batches used."""
        count = self.solver_entry.nfe
        if count is not None:
            return count(steps)
        return round(sum(self._evaluations) / max(1, len(self._evaluations)))

    def _progress_bar(self, batches: int, steps: int, total: int) -> Any:
        """A bar over every denoising step of every batch, with rate and time left; only with ``progress``, on
        rank 0, and when stderr is a terminal (a log file gets no bar lines)."""
        shown = self.progress and self.distributed.is_main and sys.stderr.isatty()
        return tqdm(total=batches * steps, unit="step", leave=False, disable=not shown,
                    desc=f"sampling {total} ({self.method.name}, {steps} steps, {batches} batches)")

    def _gather(
        self, samples: torch.Tensor, frames: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Every rank's samples and trajectory frames on rank 0, in rank order (= sample order, as the shards are
        contiguous); the other ranks keep their own."""
        parts = self.distributed.gather_to_main((samples, frames))
        if not parts:
            return samples, frames
        gathered = torch.cat([part[0] for part in parts])
        timesteps = {t for _, part_frames in parts for t in part_frames}
        return gathered, {t: torch.cat([f[t] for _, f in parts if t in f]) for t in timesteps}

    def _solve(self, grid: Grid, noise: SampleNoise, y: torch.Tensor | None, record: Sequence[int], recorded: int,
               trajectory: dict[int, list[torch.Tensor]]) -> torch.Tensor:
        """One batch: the solver from x = ``grid.start_scale`` * noise() down the grid, with guidance inside the
        denoiser; the first ``recorded`` rows are recorded at the step labels in ``record``, on the VP scale."""
        solver, evaluations = self.solver_entry, [0]

        def network(x_in: torch.Tensor, t: torch.Tensor, **times: torch.Tensor) -> torch.Tensor:
            evaluations[0] += 1  # ``times``: a two-time network's second time (``interval``)
            with autocast(self.device, self.precision):
                return self._model_output(x_in, t, y, times).to(x_in.dtype)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            return self.method.denoise(network, x, sigma)

        def velocity(x_t: torch.Tensor, t: float) -> torch.Tensor:
            return self.method.velocity(network, x_t, t)

        def average(x_t: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
            return self.method.average_velocity(network, x_t, t, t_next)

        def callback(i: int, x: torch.Tensor) -> None:
            if grid.labels[i] in record:  # a flow's x_t is already on a variance-bounded scale
                frame = x[:recorded] * (1.0 if grid.times is not None else vp_scale(grid.sigmas[i]))
                trajectory.setdefault(grid.labels[i], []).append(frame.float().cpu())
            if i:
                self._bar.update(1)

        options = {name: self.solver_options[name] for name in solver.options}
        if grid.times is None:
            x = solver.function(denoise, noise() * grid.start_scale, grid.sigmas, noise, callback, **options)
        else:
            flow = FlowField(velocity, self.method.path_coefficients, average)
            x = solver.function(flow, noise() * grid.start_scale, grid.times, noise, callback, **options)
        self._evaluations.append(evaluations[0])
        self._bar.update(1)
        if -1 in record:
            trajectory.setdefault(-1, []).append(x[:recorded].float().cpu())
        return x

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                      times: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The network's output with classifier-free guidance, then autoguidance when a guide model is set;
        ``times`` (a second time, per sample) go to the network as keywords."""
        times = times or {}
        output = self._classifier_free_output(x, t, y, times)
        if self.guide_model is None or self.guide_scale == 1.0:
            return output
        guide = self.guide_model(x, t, y, **times) if y is not None else self.guide_model(x, t, **times)
        return autoguided_output(output, guide, self.guide_scale)

    def _classifier_free_output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                                times: dict[str, torch.Tensor]) -> torch.Tensor:
        """The network's output, guided for a conditional model: one forward pass on [cond; uncond] batches."""
        w = self.guidance_scale
        if y is None or w == 1.0:
            return self.model(x, t, y, **times) if y is not None else self.model(x, t, **times)
        null = torch.full_like(y, self.num_classes)
        if w == 0.0:
            return self.model(x, t, null, **times)
        doubled = {name: torch.cat([value, value]) for name, value in times.items()}
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), **doubled).chunk(2)
        return guided_output(cond, uncond, w)


def save_samples(
    result: SampleResult,
    directory: str | Path,
    reference: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
    nrow: int | None = None,
    format: SampleFormat = "npz",
) -> list[Path]:
    """Write ``samples.npz`` (all samples, float32, plus ``labels`` when conditional; with ``format="adm"`` the ADM
    suite's ``samples_NxHxWxC.npz`` instead, :mod:`~diffusion.storage.sample_files`) and a picture of ``grid``
    (default: all samples): an image grid for ``(N, C, H, W)`` samples with ``nrow`` images per row, a scatter plot
    (over ``reference`` points if given) for ``(N, 2)``; plus ``trajectory.png`` when a trajectory was recorded."""
    from diffusion.storage.images import save_image_grid, save_scatter, save_trajectory_strip
    from diffusion.storage.sample_files import write_adm_npz, write_samples_npz

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write = write_adm_npz if format == "adm" else write_samples_npz
    npz = write(directory, result.samples, result.labels)
    shown = result.samples if grid is None else grid
    if result.samples.dim() == 4:
        written = [save_image_grid(shown, directory / "samples.png", nrow=nrow)]
        if result.trajectory:
            # Noise first, the sample (t = -1, after the last step) last.
            timesteps = sorted(result.trajectory, key=lambda t: (t < 0, -t))
            frames = [result.trajectory[t] for t in timesteps]
            written.append(save_trajectory_strip(frames, timesteps, directory / "trajectory.png"))
    else:
        written = [save_scatter(shown, directory / "samples.png", reference=reference)]
    return [npz, *written]
