"""Store: atomic files, corrupt files reported and kept, locking, index queries and rebuild."""
from __future__ import annotations

import os

import pytest
import torch

from ticketlab.atomic import atomic_write_bytes
from ticketlab.config import DataConfig, IMPConfig, TrainConfig, config_hash
from ticketlab.store import Store, StoreError, load_tensors, save_tensors


def cfg(lr: float = 1e-3, dataset: str = "digits") -> IMPConfig:
    return IMPConfig(data=DataConfig(name=dataset), train=TrainConfig(lr=lr), levels=1)


def test_open_run_is_named_by_hash_and_reopens(tmp_path):
    store = Store(tmp_path)
    run = store.open_run(cfg())
    assert run.path == tmp_path / config_hash(cfg())
    assert (run.path / "config.json").exists()
    again = store.open_run(cfg())
    assert again.path == run.path
    assert store.open_run(cfg(lr=0.1)).path != run.path
    assert store.run(run.hash[:6]).path == run.path


def test_data_root_does_not_change_the_run(tmp_path):
    a = IMPConfig(data=DataConfig(name="mnist", root="/a"))
    b = IMPConfig(data=DataConfig(name="mnist", root="/b"))
    store = Store(tmp_path)
    assert store.open_run(a).path == store.open_run(b).path


def test_tensors_round_trip_and_corrupt_file_is_reported_untouched(tmp_path):
    path = tmp_path / "w.safetensors"
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(path, t)
    back = load_tensors(path)
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="corrupt"):
        load_tensors(path)
    assert path.read_bytes() == data[: len(data) // 2]


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_lock_refuses_a_second_writer(tmp_path):
    store = Store(tmp_path)
    run = store.open_run(cfg())
    with store.lock(run):
        with pytest.raises(StoreError, match="another process"):
            with store.lock(run):
                pass
    with store.lock(run):  # released again
        pass


def test_list_filters_and_reindex(tmp_path):
    store = Store(tmp_path)
    for c in (cfg(lr=0.1, dataset="digits"), cfg(lr=0.2, dataset="mnist")):
        store.index_run(store.open_run(c), c)
    assert len(store.list()) == 2
    assert [r["dataset"] for r in store.list(dataset="mnist")] == ["mnist"]
    assert len(store.list(lr="0.1")) == 1
    assert store.list(lr="0.3") == []
    (tmp_path / "index.sqlite").unlink()
    store = Store(tmp_path)
    assert store.list() == []
    assert store.reindex() == 2
    assert sorted(r["dataset"] for r in store.list()) == ["digits", "mnist"]


def test_corrupt_index_gives_clear_error(tmp_path):
    store = Store(tmp_path)
    store.open_run(cfg())
    (tmp_path / "index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="reindex"):
        Store(tmp_path).list()


def test_unknown_run_prefix(tmp_path):
    with pytest.raises(StoreError, match="ticketlab ls"):
        Store(tmp_path).run("deadbeef")
