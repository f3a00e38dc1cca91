"""The sampler owns the model and the reverse loop; the method supplies the trajectory and each update."""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffusion.storage import checkpoint
from diffusion.storage.export import load_exported
from diffusion.storage.file_manager import FileManager, atomic_write_bytes
from diffusion.sampling.guidance import autoguided_output, guided_output
from diffusion.methods.base import SPACINGS, BaseMethod, TimestepSpacing
from diffusion.methods.karras import SOLVERS
from diffusion.methods.sigma_space import SigmaSpaceMethod
from diffusion.runtime.devices import Precision, autocast, resolve_device, resolve_precision
from diffusion.runtime.distributed import DistributedContext
from diffusion.runtime.checks import ConfigError, check_bool, check_choice, check_float, check_int


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index``'s own noise stream under ``sampler.seed=seed``: numpy's SeedSequence of the
    pair, so nearby seeds and indices give unrelated streams (``seed + index`` would make sample 1 of seed 0 equal
    sample 0 of seed 1)."""
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1, np.uint64)[0])


class SampleNoise:
    """Standard-normal noise for a batch of samples, each row from its own CPU generator seeded with
    :func:`sample_seed` of its global sample index (EDM's ``generate.py`` does the same with one generator per
    seed). Sample i's initial noise and every step's noise are then the same whatever the batch size, and
    whichever process draws it.

    Each call draws the next ``(B, *sample_shape)`` tensor, on ``device``; drawn on the CPU so that samples are
    identical on every device.
    """

    def __init__(self, seed: int, indices: Sequence[int], sample_shape: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]
        self.sample_shape = tuple(sample_shape)
        self.device = torch.device(device)

    def __call__(self) -> torch.Tensor:
        noise = torch.empty((len(self.generators), *self.sample_shape))  # (B, *sample_shape)
        for row, generator in zip(noise, self.generators):
            torch.randn(self.sample_shape, generator=generator, out=row)
        return noise.to(self.device)


@dataclass
class SampleResult:
    """Generated samples ``(N, *sample_shape)`` on the CPU, float32, in the data's range.

    ``trajectory`` maps a recorded timestep t to x_t of the first ``trajectory_samples`` samples (for a
    sigma-space method, step index t to x / sqrt(1 + sigma^2), on the data's scale). ``nfe``: network evaluations
    per sample (a guided evaluation counted once; Heun's 18 steps are 35).
    """

    samples: torch.Tensor
    steps: int
    labels: torch.Tensor | None = None
    trajectory: dict[int, torch.Tensor] = field(default_factory=dict)
    nfe: int = 0


class Sampler:
    """Batched, seeded sampling from a trained model.

    Args:
        model: the denoising network (its weights are replaced by :meth:`load_checkpoint`).
        method: DDPM, DDIM, DPM-Solver (timesteps and update), or a :class:`SigmaSpaceMethod` (EDM, Euler, Heun,
            DPM++(2M) over Karras sigmas: the denoiser and the solver).
        sample_shape: shape of one sample, ``(C, H, W)`` or ``(D,)`` (from the data set).
        num_samples: how many samples :meth:`sample` draws. batch_size: samples per forward pass.
        steps: sampling steps (None: the method's ``default_steps``: 50 for DDIM, 20 for DPM-Solver, 18 Karras
            steps for a sigma-space method; DDPM always uses all T).
        eta: DDIM stochasticity (0 deterministic, 1 DDPM-like).
        timestep_spacing: ``leading``, ``trailing`` or ``linspace`` (see :func:`~diffusion.methods.base.spaced_timesteps`).
        seed: seeds the initial noise and every step's noise, sample by sample (:class:`SampleNoise`): same seed,
            same samples, whatever ``batch_size`` and the number of processes.
        device: ``auto``, ``cpu`` or ``cuda``. precision: autocast for the network (``fp32`` default).
        guidance_scale: classifier-free guidance w for class-conditional models (Ho & Salimans 2022):
            0 unconditional, 1 conditional, > 1 guided.
        class_labels: classes to draw for a conditional model: a list (cycled over the samples), ``all`` (a
            grid with one row per class), or None (all classes in turn). Must be None for an unconditional one.
        grid_every_n_epochs: during training, also save ``samples/epoch_NNNN.png`` every N epochs (None: never).
        rho, s_churn, s_tmin, s_tmax, s_noise: sigma-space methods (``method=edm``, ``euler``, ``heun``,
            ``dpmpp_2m_karras``): the Karras schedule's rho (EDM eq. 5) and Heun's churn (EDM Alg. 2; ``s_churn=0``
            is deterministic, ``s_tmax=None`` is infinity). Ignored by DDPM, DDIM and DPM-Solver.
        guide: autoguidance (Karras et al. 2024): the guide run or checkpoint, loaded by the entry point into
            ``guide_model``. guide_model: a weaker version of ``model`` (smaller or less trained, same inputs and
            prediction target). guide_scale: w of D_guide + w (D_main - D_guide); 1 is the main model alone.
        distributed: under torchrun, :meth:`sample` splits the samples over the ranks and gathers them on rank 0
            (None: this process draws them all).

    Raises:
        ConfigError: for out-of-range arguments, naming their ``sampler.*`` key.
    """

    def __init__(
        self,
        model: nn.Module,
        method: BaseMethod | SigmaSpaceMethod,
        sample_shape: Sequence[int],
        *,
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
        progress: bool = False,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
        guide: str | None = None,
        guide_model: nn.Module | None = None,
        guide_scale: float = 1.0,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.num_samples = check_int(num_samples, "sampler.num_samples", minimum=1)
        self.batch_size = check_int(batch_size, "sampler.batch_size", minimum=1)
        if steps is not None:
            check_int(steps, "sampler.steps", minimum=1, maximum=method.num_timesteps)
        self.steps = steps
        self.eta = check_float(eta, "sampler.eta", minimum=0.0)
        self.timestep_spacing: TimestepSpacing = check_choice(timestep_spacing, "sampler.timestep_spacing", SPACINGS)
        self.seed = check_int(seed, "sampler.seed")
        self.distributed = distributed or DistributedContext()
        self.device = self.distributed.device(resolve_device(device, "sampler.device"))  # cuda:<local rank>
        self.precision: Precision = resolve_precision(precision, self.device, "sampler.precision")
        self.model = model.to(self.device).eval()
        self.method = method.to(self.device)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_classes = int(getattr(model, "num_classes", 0))
        self.guidance_scale = check_float(guidance_scale, "sampler.guidance_scale")
        if self.num_classes == 0 and self.guidance_scale != 1.0:
            raise ConfigError(f"sampler.guidance_scale={guidance_scale} needs a class-conditional model "
                              "(model.num_classes > 0); leave it at 1 for an unconditional one")
        self.class_labels = self._check_labels(class_labels)
        every = grid_every_n_epochs
        self.grid_every_n_epochs = None if every is None else check_int(every, "sampler.grid_every_n_epochs", 1)
        self.progress = check_bool(progress, "sampler.progress")
        self._bar: Any = tqdm(disable=True)  # replaced by each sample() call
        self.rho = check_float(rho, "sampler.rho", minimum=0.0, inclusive=False)
        self.churn = {
            "s_churn": check_float(s_churn, "sampler.s_churn", minimum=0.0),
            "s_tmin": check_float(s_tmin, "sampler.s_tmin", minimum=0.0),
            "s_tmax": math.inf if s_tmax is None else check_float(s_tmax, "sampler.s_tmax", minimum=0.0),
            "s_noise": check_float(s_noise, "sampler.s_noise", minimum=0.0),
        }
        if guide is not None and guide_model is None:
            raise ConfigError(f"sampler.guide={guide!r}: the guide model was not loaded (pass guide_model=)")
        self.guide = guide
        self.guide_model = None if guide_model is None else guide_model.to(self.device).eval()
        self.guide_scale = check_float(guide_scale, "sampler.guide_scale")

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
        """The class of each of ``total`` samples (None for an unconditional model).

        ``all`` gives ``total // num_classes`` samples of each class in class order (rows of the grid).
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
        """Draw samples ``first_index`` to ``first_index + num_samples - 1`` of this seed's streams, batch by batch;
        optionally record x_t at ``record_timesteps`` for the first ``trajectory_samples`` (a trajectory strip).

        Under torchrun (``distributed``) each rank draws its :meth:`~DistributedContext.shard` of whole batches and
        rank 0 gets all samples, labels and frames in sample order, the same as one process draws (the same batches,
        so bit for bit); the other ranks get their share.
        """
        total = self.num_samples if num_samples is None else num_samples
        check_int(first_index, "first_index", minimum=0)
        pairs = self.method.timestep_pairs(self.steps, self.timestep_spacing)
        labels = self.labels_for(total)
        share = self.distributed.shard(total, self.batch_size)
        chunks: list[torch.Tensor] = [torch.empty((0, *self.sample_shape))]
        trajectory: dict[int, list[torch.Tensor]] = {}
        self._bar = self._progress_bar(len(range(share.start, share.stop, self.batch_size)), len(pairs), total)
        for start in range(share.start, share.stop, self.batch_size):
            stop = min(start + self.batch_size, share.stop)
            noise = SampleNoise(self.seed, range(first_index + start, first_index + stop), self.sample_shape,
                                self.device)
            recorded = max(0, min(stop, trajectory_samples) - start)  # rows of this batch in the strip
            record = record_timesteps if recorded else ()
            y = None if labels is None else labels[start:stop].to(self.device)
            if isinstance(self.method, SigmaSpaceMethod):
                x = self._solve_sigma_space(noise, y, record, recorded, trajectory)
                self._bar.update(len(pairs))  # the solvers run a whole trajectory per call
            else:
                x = self._denoise(noise, y, pairs, record, recorded, trajectory)  # ticks once per step
            chunks.append(x.float().cpu())
        self._bar.close()
        samples = torch.cat(chunks)
        frames = {t: torch.cat(xs) for t, xs in trajectory.items()}
        if self.distributed.enabled:
            samples, frames = self._gather(samples, frames)
        own = labels if labels is None or self.distributed.is_main else labels[share.start : share.stop]
        nfe = self.method.nfe(self.steps, self.timestep_spacing)
        return SampleResult(samples=samples, steps=len(pairs), labels=own, trajectory=frames, nfe=nfe)

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

    def _denoise(
        self,
        noise: SampleNoise,
        y: torch.Tensor | None,
        pairs: list[tuple[int, int]],
        record: Sequence[int],
        recorded: int,
        trajectory: dict[int, list[torch.Tensor]],
    ) -> torch.Tensor:
        """The discrete-time loop (DDPM, DDIM, DPM-Solver): one network call and one ``method.step`` per pair,
        from x_T = ``noise()``; the first ``recorded`` rows are recorded at ``record``."""
        x = noise()
        needs_noise = self.method.needs_noise(self.eta)
        state: dict[str, Any] = {}  # per-trajectory scratch for multistep methods
        t_batch = torch.empty(x.shape[0], dtype=torch.long, device=self.device)
        for t, t_prev in pairs:
            if t in record:
                trajectory.setdefault(t, []).append(x[:recorded].float().cpu())
            with autocast(self.device, self.precision):
                model_output = self._model_output(x, t_batch.fill_(t), y)
            step_noise = noise() if needs_noise else None
            x = self.method.step(x, t, t_prev, model_output.to(x.dtype), eta=self.eta, noise=step_noise, state=state)
            self._bar.update(1)
        if -1 in record:
            trajectory.setdefault(-1, []).append(x[:recorded].float().cpu())
        return x

    def _solve_sigma_space(
        self,
        noise: SampleNoise,
        y: torch.Tensor | None,
        record: Sequence[int],
        recorded: int,
        trajectory: dict[int, list[torch.Tensor]],
    ) -> torch.Tensor:
        """A Karras solver from x = sigma_max * noise() to sigma = 0, with guidance inside the denoiser D(x; sigma);
        Heun's churn draws from the same per-sample ``noise``.

        Trajectory frames (the first ``recorded`` rows) are labelled by the step index counted down to 0 (as
        :meth:`SigmaSpaceMethod.timesteps`) and scaled by 1 / sqrt(1 + sigma^2), the variance-preserving scale of
        DDPM's frames.
        """
        method: Any = self.method
        sigmas = method.sigmas(self.steps, self.rho)
        last = len(sigmas) - 2  # the label of the first step

        def network(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, self.precision):
                return self._model_output(x_in, t, y).to(x_in.dtype)

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            return method.denoise(network, x, sigma)

        def callback(i: int, x: torch.Tensor) -> None:
            if last - i in record:
                frame = x[:recorded] / math.sqrt(1 + sigmas[i] ** 2)
                trajectory.setdefault(last - i, []).append(frame.float().cpu())

        options: dict[str, Any] = {"noise": noise, **self.churn} if method.solver == "heun" else {}
        x = SOLVERS[method.solver](denoise, noise() * sigmas[0], sigmas, callback, **options)
        if -1 in record:
            trajectory.setdefault(-1, []).append(x[:recorded].float().cpu())
        return x

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The network's output with classifier-free guidance, then autoguidance when a guide model is set."""
        output = self._classifier_free_output(x, t, y)
        if self.guide_model is None or self.guide_scale == 1.0:
            return output
        guide = self.guide_model(x, t, y) if y is not None else self.guide_model(x, t)
        return autoguided_output(output, guide, self.guide_scale)

    def _classifier_free_output(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The network's output, guided for a conditional model: one forward pass on [cond; uncond] batches."""
        w = self.guidance_scale
        if y is None or w == 1.0:
            return self.model(x, t, y) if y is not None else self.model(x, t)
        null = torch.full_like(y, self.num_classes)
        if w == 0.0:
            return self.model(x, t, null)
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
        return guided_output(cond, uncond, w)


def save_samples(
    result: SampleResult,
    directory: str | Path,
    reference: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
    nrow: int | None = None,
) -> list[Path]:
    """Write ``samples.npz`` (all samples, float32, plus ``labels`` when conditional) and a picture of ``grid``
    (default: all samples): an image grid for ``(N, C, H, W)`` samples with ``nrow`` images per row, a scatter plot
    (over ``reference`` points if given) for ``(N, 2)``; plus ``trajectory.png`` when a trajectory was recorded."""
    from diffusion.storage.images import save_image_grid, save_scatter, save_trajectory_strip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"samples": result.samples.numpy().astype(np.float32)}
    if result.labels is not None:
        arrays["labels"] = result.labels.numpy()
    npz = directory / "samples.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(npz, buffer.getvalue())  # a failed write (full disk) keeps the previous file
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
