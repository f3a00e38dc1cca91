"""Retrain the evaluator's digit classifier and write ``diffusion/evaluation/weights/digit_classifier.safetensors``.

Trains :class:`~diffusion.evaluation.classifier.DigitClassifier` on the training split of sklearn's digits, loaded
by :class:`~diffusion.data.digits.DigitsData` with the split every part of the project shares
(``train_val_indices(1797, 0.1, 0)``), with random one-pixel shifts as augmentation, for a fixed number of epochs
(no model selection on the validation split, so the reported held-out accuracy is honest). Seeded and
single-threaded by default, so reruns on one machine give identical weights. Run from the repository root:

    python -m experiments.tools.train_digit_classifier [--epochs 60] [--seed 0] [--out PATH] [--threads 1]
    python -m experiments.tools.train_digit_classifier --quick    # one epoch into outputs/, seconds: proves it works
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run by path, as diffusion.evaluation.classifier.RETRAIN_COMMAND prints it
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from diffusion.data.digits import DigitsData  # noqa: E402
from diffusion.evaluation.classifier import WEIGHTS_PATH, DigitClassifier  # noqa: E402
from experiments.lib import add_common_flags, set_threads, shown_path, work_dir  # noqa: E402

NUM_DIGITS = 1797
VAL_FRACTION = 0.1
SPLIT_SEED = 0


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` exactly as the data module serves them: ``(N, 1, 8, 8)`` in ``[-1, 1]``."""
    splits = DigitsData(image_size=8, val_fraction=VAL_FRACTION, split_seed=SPLIT_SEED).load()
    assert len(splits.train) + len(splits.val) == NUM_DIGITS
    return splits.train, splits.train_labels, splits.val, splits.val_labels


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image ``(B, 1, H, W)`` by up to ``max_shift`` pixels per axis, filling with background -1."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, 1, H + 2s, W + 2s)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
    rows = offsets[0][:, None] + torch.arange(height)  # (B, H)
    cols = offsets[1][:, None] + torch.arange(width)  # (B, W)
    batch_idx = torch.arange(batch)[:, None, None]
    return padded[batch_idx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)  # (B, 1, H, W)


@torch.no_grad()
def accuracy(model: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).double().mean().item()


def train_classifier(make_model: Callable[[], DigitClassifier], split: tuple[torch.Tensor, ...],
                     args: argparse.Namespace, log_every: int = 10) -> tuple[DigitClassifier, float]:
    """Train a ``make_model()`` (built after seeding, so ``args.seed`` fixes its initial weights) on
    ``split = (x_train, y_train, x_val, y_val)`` for ``args.epochs`` epochs (AdamW, cosine decay, label smoothing,
    random shifts); returns it in eval mode and its held-out accuracy. Shared with ``train_mnist_classifier``."""
    x_train, y_train, x_val, y_val = split
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    # Cosine decay to zero over the whole run (Loshchilov & Hutter 2017, SGDR without restarts).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for batch_idx in order.split(args.batch_size):
            x = random_shift(x_train[batch_idx], args.max_shift, generator)
            loss = F.cross_entropy(model(x), y_train[batch_idx], label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if (epoch + 1) % log_every == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  val_acc {accuracy(model, x_val, y_val):.4f}",
                  flush=True)
    return model.eval(), accuracy(model, x_val, y_val)


def add_training_flags(parser: argparse.ArgumentParser, epochs: int, max_shift: int) -> None:
    """The optimisation flags both classifier scripts take (their defaults differ in epochs and shift)."""
    parser.add_argument("--epochs", type=int, help=f"default {epochs}; with --quick 1")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--max-shift", type=int, default=max_shift)
    parser.add_argument("--seed", type=int, default=0)


def train_and_save(args: argparse.Namespace, make_model: Callable[[], DigitClassifier],
                   split: tuple[torch.Tensor, ...], metadata: dict[str, str], log_every: int = 10) -> None:
    """Train (deterministic algorithms, ``args.threads`` threads) and write the weights with their metadata."""
    set_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model, val_accuracy = train_classifier(make_model, split, args, log_every)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"val_accuracy": f"{val_accuracy:.6f}", **metadata, "seed": str(args.seed), "epochs": str(args.epochs),
                "feature_dim": str(model.feature_dim)}
    save_file(state, str(args.out), metadata=metadata)
    size_kb = args.out.stat().st_size / 1024
    print(f"held-out accuracy {val_accuracy:.4f}  trained in {seconds:.1f}s  wrote {args.out} ({size_kb:.0f} KiB)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, threads=1, out_help=f"where the weights go (default: {shown_path(WEIGHTS_PATH)}, the "
                     "shipped ones; with --quick, outputs/classifier/); threads fixed so reruns match bit for bit")
    add_training_flags(parser, epochs=60, max_shift=1)
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else 60)
    if args.out is None:  # --quick never overwrites the shipped weights
        args.out = work_dir("classifier", "quick") / WEIGHTS_PATH.name if args.quick else WEIGHTS_PATH
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train_and_save(args, DigitClassifier, load_digits_split(),
                   {"split": f"train_val_indices({NUM_DIGITS}, {VAL_FRACTION}, {SPLIT_SEED})"})


if __name__ == "__main__":
    main()
