"""Tests for ticketlab.data: file formats, normalisation, safety, augmentation, splits, registry."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketlab.data import (
    DATASETS,
    ArrayData,
    DataError,
    DataSplits,
    RandomCropFlip,
    load_dataset,
    read_idx,
    register_dataset,
    split_validation,
    write_idx,
)

MNIST_DIR = Path("/work/shared/data/mnist")
MNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# --------------------------------------------------------------------------- IDX reader

def _idx_bytes(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """An IDX file built by hand from the format description (independent of write_idx)."""
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_hand_built_files(tmp_path: Path, gz: bool) -> None:
    u8 = _idx_bytes(0x08, (2, 3), bytes([0, 1, 2, 253, 254, 255]))
    i16 = _idx_bytes(0x0B, (2,), b"\x01\x02\xff\xfe")  # big-endian 258, -2
    f32 = _idx_bytes(0x0D, (1,), struct.pack(">f", 1.5))
    for name, blob in (("u8", u8), ("i16", i16), ("f32", f32)):
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(blob) if gz else blob)
    np.testing.assert_array_equal(read_idx(tmp_path / ("u8" + (".gz" if gz else ""))), [[0, 1, 2], [253, 254, 255]])
    assert read_idx(tmp_path / ("u8" + (".gz" if gz else ""))).dtype == np.uint8
    np.testing.assert_array_equal(read_idx(tmp_path / ("i16" + (".gz" if gz else ""))), [258, -2])
    assert read_idx(tmp_path / ("f32" + (".gz" if gz else "")))[0] == 1.5


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_write_idx_read_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / f"a{suffix}", array)
    back = read_idx(tmp_path / f"a{suffix}")
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def _write_mnist(root: Path, n_train: int = 5, n_test: int = 3, gz: tuple[bool, ...] = (True, False, False, True),
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny MNIST-format files with random pixels; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        MNIST_NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        MNIST_NAMES[1]: rng.integers(0, 10, n_train).astype(np.uint8),
        MNIST_NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        MNIST_NAMES[3]: rng.integers(0, 10, n_test).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for (name, array), zipped in zip(arrays.items(), gz):
        write_idx(root / (name + (".gz" if zipped else "")), array)
    return arrays


@pytest.mark.parametrize(("name", "mean", "std"), [("mnist", 0.1307, 0.3081), ("fashion_mnist", 0.2860, 0.3530)])
def test_tiny_mnist_values_and_normalisation(tmp_path: Path, name: str, mean: float, std: float) -> None:
    arrays = _write_mnist(tmp_path)
    splits = load_dataset(name, tmp_path)
    assert splits.name == name and splits.num_classes == 10 and splits.input_shape == (1, 28, 28)
    assert splits.augment is None
    assert splits.train.x.shape == (5, 1, 28, 28) and splits.test.x.shape == (3, 1, 28, 28)
    assert splits.train.x.dtype == torch.float32 and splits.train.y.dtype == torch.int64
    expected = (arrays[MNIST_NAMES[0]].astype(np.float64) / 255.0 - mean) / std
    np.testing.assert_allclose(splits.train.x[:, 0].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(splits.train.y.numpy(), arrays[MNIST_NAMES[1]])
    np.testing.assert_array_equal(splits.test.y.numpy(), arrays[MNIST_NAMES[3]])
    # exact corner values: pixel 0 and 255
    assert (splits.train.x.min().item(), splits.train.x.max().item()) == pytest.approx(
        (-mean / std, (1 - mean) / std), abs=1e-5)


def test_mnist_torchvision_layout_is_found(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_dataset("mnist", tmp_path).train) == 5


def test_corrupt_idx_bad_magic_names_file(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=(False, False, False, False))
    bad = tmp_path / MNIST_NAMES[0]
    blob = bytearray(bad.read_bytes())
    blob[0:4] = b"\x12\x34\x08\x03"
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="magic") as info:
        load_dataset("mnist", tmp_path)
    assert MNIST_NAMES[0] in str(info.value)


def test_unknown_idx_type_code_is_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(_idx_bytes(0x07, (1,), b"\x00"))
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_names_file(tmp_path: Path, gz: bool) -> None:
    _write_mnist(tmp_path, gz=(gz,) * 4)
    name = MNIST_NAMES[2] + (".gz" if gz else "")
    path = tmp_path / name
    blob = path.read_bytes()
    if gz:  # a cut-off download: the gzip stream ends early
        path.write_bytes(blob[: len(blob) // 2])
    else:
        path.write_bytes(blob[:-100])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    assert name in str(info.value)
    if not gz:
        assert "truncated" in str(info.value)


def test_idx_truncated_header_and_trailing_bytes(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="short.*truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(_idx_bytes(0x08, (2,), b"\x01\x02\x03"))
    with pytest.raises(DataError, match="longer"):
        read_idx(tmp_path / "long")


def test_mnist_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=(False,) * 4)
    write_idx(tmp_path / MNIST_NAMES[1], np.zeros(4, dtype=np.uint8))  # 5 images, 4 labels
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / MNIST_NAMES[1], np.full(5, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="labels outside"):
        load_dataset("mnist", tmp_path)
    write_idx(tmp_path / MNIST_NAMES[1], np.zeros(5, dtype=np.uint8))
    write_idx(tmp_path / MNIST_NAMES[0], np.zeros((5, 28, 27), dtype=np.uint8))
    with pytest.raises(DataError, match="28 x 28"):
        load_dataset("mnist", tmp_path)


def test_missing_mnist_files_names_all_expected_files(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / (MNIST_NAMES[3] + ".gz")).unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion_mnist", tmp_path)
    message = str(info.value)
    for name in MNIST_NAMES:
        assert name in message
    assert str(tmp_path) in message and "download" in message.lower()


def test_root_required_and_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="not an existing directory"):
        load_dataset("cifar10", tmp_path / "nope")


@pytest.fixture(scope="module")
def real_mnist() -> DataSplits:
    if not all((MNIST_DIR / f"{n}.gz").is_file() or (MNIST_DIR / n).is_file() for n in MNIST_NAMES):
        pytest.skip(f"real MNIST files not present in {MNIST_DIR}")
    return load_dataset("mnist", MNIST_DIR)


def test_real_mnist(real_mnist: DataSplits) -> None:
    assert real_mnist.train.x.shape == (60000, 1, 28, 28) and real_mnist.test.x.shape == (10000, 1, 28, 28)
    assert torch.bincount(real_mnist.train.y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(real_mnist.test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = real_mnist.train.x
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1.0) < 1e-3


# --------------------------------------------------------------------------- CIFAR

def _py2_pickle(batch: dict[bytes, object]) -> bytes:
    """A pickle laid out like the official CIFAR files (Python 2 cPickle, protocol 2).

    Python 2 strings are BINSTRING opcodes and the array names numpy.core.multiarray, which
    Python 3's pickler cannot produce, so the opcodes are written by hand.
    """
    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def integer(i: int) -> bytes:
        return b"K" + bytes([i]) if 0 <= i < 256 else b"J" + struct.pack("<i", i)

    def value(v: object) -> bytes:
        if isinstance(v, bytes):
            return string(v)
        if isinstance(v, list):
            return b"](" + b"".join(integer(int(i)) for i in v) + b"e"
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        dtype = b"cnumpy\ndtype\n(" + string(b"u1") + b"K\x00K\x01tR(K\x03" + string(b"|") + \
            b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R"
                b"(K\x01" + integer(v.shape[0]) + integer(v.shape[1]) + b"\x86" + dtype + b"\x89"
                + string(v.tobytes()) + b"tb")

    body = b"".join(string(k) + value(v) for k, v in batch.items())
    return b"\x80\x02}(" + body + b"u."


def _write_batch(path: Path, data: np.ndarray, labels: list[int], label_key: str, style: str) -> None:
    """Write one batch: 'py2' like the official files, or Python 3 pickle protocol 3/5 with str keys."""
    if style == "py2":
        blob = _py2_pickle({b"batch_label": b"testing batch", label_key.encode(): labels, b"data": data})
    else:
        blob = pickle.dumps({"batch_label": "testing batch", label_key: labels, "data": data},
                            protocol=int(style[-1]))
    path.write_bytes(blob)


def _write_cifar(folder: Path, variant: str, style: str, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tiny CIFAR folder in the official layout; returns file -> (data, labels) written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "cifar10":
        files, key, classes = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"], "labels", 10
    else:
        files, key, classes = ["train", "test"], "fine_labels", 100
    written = {}
    for i, name in enumerate(files):
        n = 2 + i % 3
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n)
        if variant == "cifar100" and style != "py2":
            blob = {"data": data, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
            (folder / name).write_bytes(pickle.dumps(blob, protocol=int(style[-1])))
        else:
            _write_batch(folder / name, data, labels.tolist(), key, style)
        written[name] = (data, labels)
    return written


def _expected_images(data: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    images = data.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    return (images - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]


@pytest.mark.parametrize("style", ["py2", "protocol3", "protocol5"])
@pytest.mark.parametrize("in_subfolder", [False, True])
def test_cifar10_official_format(tmp_path: Path, style: str, in_subfolder: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if in_subfolder else tmp_path
    written = _write_cifar(folder, "cifar10", style)
    splits = load_dataset("cifar10", tmp_path)
    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    assert splits.train.x.shape == (len(train_data), 3, 32, 32) and splits.train.x.dtype == torch.float32
    np.testing.assert_allclose(splits.train.x.numpy(), _expected_images(train_data, CIFAR10_MEAN, CIFAR10_STD), atol=1e-5)
    np.testing.assert_array_equal(splits.train.y.numpy(), train_labels)
    np.testing.assert_allclose(splits.test.x.numpy(),
                               _expected_images(written["test_batch"][0], CIFAR10_MEAN, CIFAR10_STD), atol=1e-5)
    np.testing.assert_array_equal(splits.test.y.numpy(), written["test_batch"][1])
    assert isinstance(splits.augment, RandomCropFlip)
    assert load_dataset("cifar10", tmp_path, augment=False).augment is None


@pytest.mark.parametrize("style", ["py2", "protocol5"])
@pytest.mark.parametrize("in_subfolder", [False, True])
def test_cifar100_fine_labels(tmp_path: Path, style: str, in_subfolder: bool) -> None:
    folder = tmp_path / "cifar-100-python" if in_subfolder else tmp_path
    written = _write_cifar(folder, "cifar100", style)
    splits = load_dataset("cifar100", tmp_path)
    assert splits.num_classes == 100
    np.testing.assert_array_equal(splits.train.y.numpy(), written["train"][1])
    np.testing.assert_allclose(splits.test.x.numpy(),
                               _expected_images(written["test"][0], CIFAR100_MEAN, CIFAR100_STD), atol=1e-5)


class _Evil:
    """Pickles as a call to `func(arg)`: what a tampered data file would contain."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple:
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_forbidden_global_is_refused_not_executed(tmp_path: Path, kind: str) -> None:
    _write_cifar(tmp_path, "cifar10", "protocol5")
    marker = tmp_path / "pwned"
    payload = (_Evil(os.system, f"touch {marker}") if kind == "os.system"
               else _Evil(exec, f"open({str(marker)!r}, 'w').close()"))
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": payload}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(DataError, match="forbidden global") as info:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_cifar_corrupt_and_malformed_batches(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "cifar10", "protocol5")
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path)
    _write_batch(tmp_path / "test_batch", np.zeros((2, 100), np.uint8), [0, 1], "labels", "protocol5")
    with pytest.raises(DataError, match="N x 3072"):
        load_dataset("cifar10", tmp_path)
    _write_batch(tmp_path / "test_batch", np.zeros((2, 3072), np.uint8), [0], "labels", "protocol5")
    with pytest.raises(DataError, match="labels"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match="no 'labels' entry"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_names_expected_files(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "cifar-10-batches-py", "tar xzf"]:
        assert name in message
    with pytest.raises(DataError, match="cifar-100-python.*train, test"):
        load_dataset("cifar100", tmp_path)


# --------------------------------------------------------------------------- augmentation

def _candidates(image: np.ndarray, padding: int) -> dict[tuple[int, int, bool], np.ndarray]:
    """Every crop (dy, dx) of the zero-padded image, unflipped and flipped, built with numpy."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    out = {}
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            out[(dy, dx, False)] = crop
            out[(dy, dx, True)] = crop[:, :, ::-1]
    return out


def test_augment_is_a_shifted_or_flipped_copy() -> None:
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    out = RandomCropFlip(padding=4)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)  # input left alone
    seen = []
    for i in range(len(x)):
        matches = [k for k, c in _candidates(x[i].numpy(), 4).items() if np.array_equal(c, out[i].numpy())]
        assert len(matches) == 1, f"sample {i} is not a crop/flip of its input"
        seen.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) > 20  # offsets really vary
    assert 0.25 < np.mean([f for *_, f in seen]) < 0.75  # about half flipped


def test_augment_by_hand() -> None:
    """A 4x4 image with 1 pixel of padding: two outcomes written out by hand."""
    image = torch.arange(1, 17, dtype=torch.float32).view(1, 1, 4, 4)
    out = RandomCropFlip(padding=1)(image.expand(400, 1, 4, 4), torch.Generator().manual_seed(3))
    # padded image rows: 0 | 0 1 2 3 4 0 | 0 5 6 7 8 0 | 0 9 10 11 12 0 | 0 13 14 15 16 0 | 0
    top_left = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11]], dtype=torch.float32)
    low_left_flipped = torch.tensor([[7, 6, 5, 0], [11, 10, 9, 0], [15, 14, 13, 0], [0, 0, 0, 0]],
                                    dtype=torch.float32)  # crop at row 2, col 0, then mirrored
    outs = out[:, 0]
    assert any(torch.equal(o, top_left) for o in outs)
    assert any(torch.equal(o, low_left_flipped) for o in outs)
    assert any(torch.equal(o, image[0, 0]) for o in outs)  # centre crop, no flip: unchanged


def test_augment_deterministic_for_seed_and_no_padding_only_flips() -> None:
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    aug = RandomCropFlip(padding=2)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flips_only = RandomCropFlip(padding=0)(x, torch.Generator().manual_seed(0))
    for i in range(len(x)):
        assert torch.equal(flips_only[i], x[i]) or torch.equal(flips_only[i], x[i].flip(-1))
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x, torch.Generator()), x)
    with pytest.raises(DataError, match="N x C x H x W"):
        aug(x[0], torch.Generator())


# --------------------------------------------------------------------------- digits and synthetic

def test_digits_shapes_normalisation_and_seed() -> None:
    a = load_dataset("digits")
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert a.input_shape == (64,) and a.train.x.shape == (1437, 64) and a.num_classes == 10
    assert abs(a.train.x.mean().item()) < 1e-5 and abs(a.train.x.std().item() - 1) < 1e-4
    assert torch.bincount(a.test.y, minlength=10).min() >= 35  # stratified: ~36 per class
    b = load_dataset("digits", seed=0)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    c = load_dataset("digits", seed=1, test_fraction=0.5)
    assert len(c.test) == 899 and not torch.equal(c.train.y[:100], a.train.y[:100])
    images = load_dataset("digits", flatten=False)
    assert images.input_shape == (1, 8, 8) and torch.equal(images.train.x.flatten(1), a.train.x)
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=1.5)


def test_synthetic_images_deterministic_and_learnable() -> None:
    kwargs = dict(n_train=400, n_test=200, num_classes=5, shape=(1, 12, 12), seed=3)
    a, b = load_dataset("synthetic_images", **kwargs), load_dataset("synthetic_images", **kwargs)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape == (400, 1, 12, 12) and a.input_shape == (1, 12, 12) and a.num_classes == 5
    assert torch.bincount(a.train.y).tolist() == [80] * 5
    assert not torch.equal(a.train.x, load_dataset("synthetic_images", **{**kwargs, "seed": 4}).train.x)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 5))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(50):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(a.train.x), a.train.y).backward()
        optimiser.step()
    accuracy = (model(a.test.x).argmax(1) == a.test.y).float().mean().item()
    assert accuracy > 0.9
    default = load_dataset("synthetic_images", n_train=4, n_test=2)
    assert default.input_shape == (3, 32, 32)
    with pytest.raises(DataError, match="n_train"):
        load_dataset("synthetic_images", n_train=0)


def test_synthetic_mlp() -> None:
    a = load_dataset("synthetic_mlp", n_train=100, n_test=40, dim=7, num_classes=3, seed=1)
    assert a.train.x.shape == (100, 7) and a.test.x.shape == (40, 7) and a.input_shape == (7,)
    assert torch.equal(a.train.x, load_dataset("synthetic_mlp", n_train=100, n_test=40, dim=7, num_classes=3,
                                               seed=1).train.x)
    assert set(a.train.y.tolist()) == {0, 1, 2}


# --------------------------------------------------------------------------- containers, splits, registry

def _numbered(n: int) -> ArrayData:
    """Samples whose first feature is their index, so splits can be traced back."""
    return ArrayData(torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), torch.arange(n) % 4)


def test_split_validation_sizes_disjoint_deterministic() -> None:
    data = _numbered(100)
    rest, val = split_validation(data, 20, seed=0)
    assert (len(rest), len(val)) == (80, 20)
    ids_rest, ids_val = set(rest.x[:, 0].long().tolist()), set(val.x[:, 0].long().tolist())
    assert not ids_rest & ids_val and ids_rest | ids_val == set(range(100))
    assert torch.equal(val.y, val.x[:, 0].long() % 4)  # labels travel with their samples
    rest2, val2 = split_validation(data, 20, seed=0)
    assert torch.equal(val.x, val2.x) and torch.equal(rest.x, rest2.x)
    assert not torch.equal(val.x, split_validation(data, 20, seed=1)[1].x)
    same, empty = split_validation(data, 0, seed=0)
    assert same is data and len(empty) == 0 and empty.x.shape == (0, 3)
    for bad in (100, 150, -1):
        with pytest.raises(DataError):
            split_validation(data, bad, seed=0)


def test_array_data_basics() -> None:
    data = _numbered(10)
    assert len(data) == 10
    picked = data.subset(torch.tensor([3, 1]))
    assert picked.x[:, 0].tolist() == [3.0, 1.0] and picked.y.tolist() == [3, 1]
    masked = data.subset(data.y == 0)
    assert masked.x[:, 0].tolist() == [0.0, 4.0, 8.0]
    assert data.to("cpu").x.device.type == "cpu"
    with pytest.raises(DataError, match="number of samples"):
        ArrayData(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DataError, match="int64"):
        ArrayData(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32))
    with pytest.raises(DataError, match="floating"):
        ArrayData(torch.zeros(3, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="input_shape"):
        DataSplits("x", data, data, num_classes=4, input_shape=(2,))


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "synthetic_images"):
        assert name in str(info.value)


def test_unknown_option_lists_accepted_ones() -> None:
    with pytest.raises(DataError, match="n_trian.*accepted options: n_train"):
        load_dataset("synthetic_images", n_trian=5)


def test_register_dataset_and_name_normalisation(tmp_path: Path) -> None:
    @register_dataset("tiny-test-set")
    def tiny(root: Path | None, n: int = 2) -> DataSplits:
        data = _numbered(n)
        return DataSplits("tiny_test_set", data, data, num_classes=4, input_shape=(3,))

    try:
        assert load_dataset("Tiny_Test_Set", n=3).train.x.shape == (3, 3)

        with pytest.raises(DataError, match="already registered"):
            @register_dataset("tiny_test_set")
            def other(root: Path | None) -> DataSplits:  # pragma: no cover - never called
                raise AssertionError
    finally:
        DATASETS.pop("tiny_test_set")
    _write_mnist(tmp_path)
    assert load_dataset("Fashion-MNIST", str(tmp_path)).name == "fashion_mnist"


def test_array_data_holds_float_regression_targets() -> None:
    x = torch.randn(5, 2)
    for y in (torch.randn(5), torch.randn(5, 3), torch.randn(5, 3, dtype=torch.float64)):
        data = ArrayData(x, y)
        assert len(data) == 5 and data.subset(torch.tensor([4, 0])).y.shape == (2, *y.shape[1:])
    splits = DataSplits("reg", ArrayData(x, torch.randn(5, 3)), ArrayData(x[:2], torch.randn(2, 3)),
                        num_classes=3, input_shape=(2,))
    assert splits.to("cpu").train.y.dtype == torch.float32
    with pytest.raises(DataError, match="1-D"):  # class labels stay (N,)
        ArrayData(x, torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(DataError, match="regression targets"):
        ArrayData(x, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(DataError, match="number of samples"):
        ArrayData(x, torch.randn(4, 3))
