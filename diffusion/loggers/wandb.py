"""Logs a run to Weights & Biases: flattened config, metrics, sample grids, summary, optional checkpoints.

One logger owns one W&B run (``reinit="create_new"``), started on first use; a W&B failure is a warning, never
lost training.
"""

from __future__ import annotations

import netrc
import os
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Literal
from urllib.parse import urlparse

from diffusion.loggers.base import BaseLogger
from diffusion.loggers.file import metrics_line, plain
from diffusion.loggers.naming import flatten_config
from diffusion.runtime.checks import ConfigError, check_choice
from diffusion.runtime.signals import Interrupted

Mode = Literal["online", "offline", "disabled"]
MODES = ("online", "offline", "disabled")
DEFAULT_HOST = "https://api.wandb.ai"
NETWORK_TIMEOUT_S = 3.0
CHECKPOINT_NAMES = ("last.pt", "best.pt")
MAX_TAG = 64  # W&B refuses longer tags when the run is created or synced


def import_wandb() -> ModuleType:
    """The ``wandb`` module; ConfigError saying how to install it when it is missing."""
    try:
        import wandb
    except ImportError as error:
        raise ConfigError(
            "logger=wandb needs the wandb package: pip install wandb (or pip install -e .[wandb]), "
            "or choose logger=file"
        ) from error
    return wandb


def wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)


def has_credentials(host: str | None = None) -> bool:
    """Whether an API key is available without asking: ``WANDB_API_KEY``, an identity token file, or a netrc
    entry for the W&B host (where ``wandb login`` stores the key)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    hostname = urlparse(host or wandb_host()).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(hostname)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def is_reachable(host: str | None = None, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the W&B host opens within ``timeout`` seconds."""
    url = urlparse(host or wandb_host())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_mode(mode: Mode) -> Mode:
    """The mode to run in: ``WANDB_MODE=offline|disabled`` in the environment wins over ``online``, and online
    without credentials or network falls back to offline with a warning (no network is touched otherwise)."""
    env_mode = os.environ.get("WANDB_MODE", "")
    if mode == "online" and env_mode in ("offline", "dryrun", "disabled"):
        return "disabled" if env_mode == "disabled" else "offline"
    if mode != "online":
        return mode
    if not has_credentials():
        reason = "no W&B API key found (set WANDB_API_KEY or run `wandb login`)"
    elif not is_reachable():
        reason = f"{wandb_host()} is not reachable"
    else:
        return "online"
    warnings.warn(f"logger.mode=online: {reason}; logging offline instead (upload later with `wandb sync`)")
    return "offline"


def exit_code_of(exc_type: type[BaseException] | None, exc: BaseException | None) -> int:
    """The exit code a job leaving with this exception reports: 0 for none or ``SystemExit(0)``, a stop signal's
    128 + signal number for :class:`Interrupted` (raised at once outside the training loop, it reaches the logger
    before ``exit_on_failure`` turns it into that exit), else non-zero."""
    if exc_type is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(exc, Interrupted):
        return exc.exit_code
    return 1


class WandbLogger(BaseLogger):
    """A W&B run for one training run, its files under ``<run_dir>/wandb/``.

    ``run_id`` continues that W&B run (a resumed training passes its checkpoint's). Settings: see
    conf/logger/wandb.yaml.
    """

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "diffusion",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        mode: Mode = "offline",
        name: str | None = None,
        log_checkpoints: bool = False,
        run_id: str | None = None,
        config: dict[str, Any] | None = None,
        console: bool = True,
    ) -> None:
        check_choice(mode, "logger.mode", MODES)
        if not isinstance(project, str) or not project:
            raise ConfigError(f"logger.project must be a non-empty string, got {project!r}")
        if isinstance(tags, str) or not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG for t in tags):
            raise ConfigError(f"logger.tags must be a list of strings of 1-{MAX_TAG} characters, got {tags!r}")
        self.run_dir = Path(run_dir)
        self.project, self.entity, self.group, self.name = project, entity, group, name
        self.tags = list(tags)
        self.log_checkpoints = bool(log_checkpoints)
        self.console = console
        self._requested_id = run_id
        self._config = flatten_config(config) if config else None
        self._wandb: ModuleType | None = None if mode == "disabled" else import_wandb()
        self.mode: Mode = resolve_mode(mode)
        self._run: Any = None
        self._closed = False
        self._failed = False  # W&B itself failed: stop calling it
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------------------
    # The run
    # ------------------------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        """The W&B run id (starts the run if needed); None when disabled or W&B failed."""
        run = self._active_run()
        return None if run is None else str(run.id)

    @property
    def run(self) -> Any:
        """The underlying ``wandb.Run`` (None before the first log, when disabled, or after close)."""
        return self._run

    def _active_run(self) -> Any:
        if self._run is None and not (self._closed or self._failed or self.mode == "disabled"):
            self._run = self._start(self.mode)
            if self._run is None and self.mode == "online":
                self.mode = "offline"
                self._run = self._start("offline")
            self._failed = self._run is None
        return self._run

    def _start(self, mode: Mode) -> Any:
        wandb = self._wandb
        assert wandb is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._guard(f"starting the {mode} W&B run"):
            return wandb.init(
                dir=str(self.run_dir),
                project=self.project,
                entity=self.entity,
                group=self.group,
                tags=self.tags or None,
                name=self.name,
                mode=mode,
                id=self._requested_id,
                resume="allow" if self._requested_id else None,
                config=self._config,
                reinit="create_new",
                settings=wandb.Settings(silent=True),
            )
        return None

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn a W&B failure into one warning per kind of action; training goes on."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - a logging failure must not end training
            if action not in self._warned:
                self._warned.add(action)
                warnings.warn(f"W&B logger: {action} failed ({type(error).__name__}: {error}); continuing")

    # ------------------------------------------------------------------------------------------------
    # BaseLogger
    # ------------------------------------------------------------------------------------------------
    def log(self, info: dict[str, Any] | str, step: int | None = None) -> None:
        if self.console:
            print(info if isinstance(info, str) else metrics_line(info, step), file=sys.stdout, flush=True)
        if isinstance(info, str):
            return
        run = self._active_run()
        if run is not None:
            with self._guard("logging metrics"):
                run.log(plain(info), step=step)

    def log_hyperparams(self, params: dict[str, Any]) -> None:
        run = self._active_run()
        if run is not None:
            with self._guard("logging the config"):
                run.config.update(flatten_config(params), allow_val_change=True)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        run = self._active_run()
        if run is not None and self._wandb is not None:
            with self._guard(f"logging image {key}"):
                run.log({key: self._wandb.Image(str(path))}, step=step)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        run = self._active_run()
        if run is not None:
            with self._guard("updating the summary"):
                run.summary.update(plain(metrics))

    def log_loss_curve(self, train: Sequence[float], val: Sequence[float]) -> None:
        """Nothing to do: W&B plots ``train/loss`` and ``val/loss`` from the history."""

    def log_curve(self, key: str, x_name: str, curves: dict[str, list[tuple[float, float]]]) -> None:
        """One W&B line chart per curve, ``<key>/<name>``, with ``x_name`` on its x axis (a table of the points
        and its plot, so the chart does not depend on the history's step axis)."""
        run = self._active_run()
        if run is None or self._wandb is None:
            return
        wandb = self._wandb
        with self._guard(f"logging chart {key}"):
            charts = {
                f"{key}/{name}": wandb.plot.line(wandb.Table(columns=[x_name, name], data=[list(p) for p in points]),
                                                 x_name, name, title=f"{name} against {x_name}")
                for name, points in curves.items()
            }
            run.log(charts)

    def _upload(self, run: Any, files: dict[str, Path], name: str, type: str, aliases: Sequence[str]) -> None:
        assert self._wandb is not None
        with self._guard(f"logging artifact {name}"):
            artifact = self._wandb.Artifact(name, type=type)
            for inner, local in files.items():
                artifact.add_file(str(local), name=inner)
            run.log_artifact(artifact, aliases=list(aliases) or None)

    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run (with ``exit_code``; non-zero marks it failed); idempotent."""
        if self._closed:
            return
        self._closed = True
        run, self._run = self._run, None
        if run is None:
            return
        if self.log_checkpoints:
            self._store_checkpoints(run)
        with self._guard("finishing the run"):
            offline_dir = Path(run.settings.sync_file).parent
            run.finish(exit_code=exit_code)
            if self.mode == "offline":
                self._print_where(offline_dir)

    def _print_where(self, offline_dir: Path) -> None:
        """Where the offline run is, and the commands that upload it and browse it in the terminal."""
        print(f"W&B offline run: {offline_dir}\n"
              f"upload it with: wandb sync {offline_dir}\n"
              f"browse it with: wandb leet {self.run_dir / 'wandb'}", file=sys.stdout, flush=True)

    def _store_checkpoints(self, run: Any) -> None:
        directory = self.run_dir / "checkpoints"
        files = {n: directory / n for n in CHECKPOINT_NAMES if (directory / n).is_file()}
        if files:
            self._upload(run, files, f"model-{run.id}", "model", aliases=("latest",))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exit_code=exit_code_of(exc_type, exc))
