"""Tests for ticketlab.masks.Mask: counts, algebra, distances, model interaction, persistence."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from ticketlab.masks import Mask, MaskError


def two_layer() -> Mask:
    # a: 2x3 with 4 kept, b: 4 with 1 kept -> 5 of 10 kept
    return Mask({
        "a": torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool),
        "b": torch.tensor([False, False, True, False]),
    })


def other_layer() -> Mask:
    return Mask({
        "a": torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool),
        "b": torch.tensor([True, False, True, True]),
    })


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


# --- construction, mapping, equality --------------------------------------------------------------
def test_empty_mask_is_rejected():
    with pytest.raises(MaskError):
        Mask({})


def test_constructor_converts_to_cpu_bool():
    m = Mask({"w": torch.tensor([0.0, 2.5, -1.0])})
    assert m["w"].dtype == torch.bool
    assert m["w"].device.type == "cpu"
    assert m["w"].tolist() == [False, True, True]


def test_mapping_protocol_keeps_insertion_order():
    m = Mask({"z": torch.ones(2), "a": torch.zeros(3)})
    assert list(m) == ["z", "a"]
    assert len(m) == 2
    assert "z" in m and "q" not in m
    with pytest.raises(KeyError):
        m["q"]


def test_constructor_copies_its_input():
    src = torch.tensor([True, False, True])
    m = Mask({"w": src})
    src[1] = True
    src[0] = False
    assert m["w"].tolist() == [True, False, True]


def test_mask_has_no_item_assignment():
    m = two_layer()
    with pytest.raises(TypeError):
        m["a"] = torch.ones(2, 3, dtype=torch.bool)  # type: ignore[index]


def test_equality_semantics():
    assert two_layer() == two_layer()
    assert two_layer() != other_layer()
    # same content built from a different dtype is equal
    assert Mask({"w": torch.tensor([1.0, 0.0])}) == Mask({"w": torch.tensor([True, False])})
    # same values, different names / shapes are not equal
    assert Mask({"w": torch.ones(2)}) != Mask({"v": torch.ones(2)})
    assert Mask({"w": torch.ones(4)}) != Mask({"w": torch.ones(2, 2)})
    assert Mask({"w": torch.ones(2)}) != Mask({"w": torch.ones(2), "v": torch.ones(1)})
    # not equal to a plain dict with the same tensors
    assert Mask({"w": torch.ones(2)}) != {"w": torch.ones(2, dtype=torch.bool)}


def test_mask_is_unhashable():
    with pytest.raises(TypeError):
        hash(two_layer())


def test_ones_dense_and_from_nonzero():
    params = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    ones = Mask.ones(params)
    assert ones.num_kept == ones.num_total == 10
    assert ones["a"].shape == (2, 3)

    model = tiny_mlp()
    dense = Mask.dense(model)
    assert list(dense) == ["0.weight", "2.weight"]
    assert dense.density == 1.0
    assert list(Mask.dense(model, include_output=False)) == ["0.weight"]

    nz = Mask.from_nonzero({"w": torch.tensor([[0.0, 3.0], [-0.0, -2.0]])})
    assert nz["w"].tolist() == [[False, True], [False, True]]


# --- counts and densities ---------------------------------------------------------------------------
def test_counts_and_densities_hand_computed():
    m = two_layer()
    assert m.num_total == 10
    assert m.num_kept == 5
    assert m.density == pytest.approx(0.5)
    assert m.sparsity == pytest.approx(0.5)
    assert m.kept_per_layer() == {"a": 4, "b": 1}
    assert m.densities() == pytest.approx({"a": 4 / 6, "b": 1 / 4})


def test_density_weights_layers_by_size():
    m = Mask({"big": torch.zeros(99, dtype=torch.bool), "small": torch.ones(1, dtype=torch.bool)})
    assert m.density == pytest.approx(0.01)  # not the mean of per-layer densities (0.5)


def test_table_lists_every_layer_and_total():
    lines = two_layer().table().splitlines()
    assert len(lines) == 4  # header, a, b, total
    assert lines[0].split()[:2] == ["parameter", "shape"]
    assert lines[1].split() == ["a", "2x3", "4", "6", "0.6667"]
    assert lines[2].split() == ["b", "4", "1", "4", "0.2500"]
    assert lines[3].split() == ["total", "5", "10", "0.5000"]


def test_repr_mentions_density_and_counts():
    r = repr(two_layer())
    assert "2 tensors" in r and "0.5000" in r and "5/10" in r


# --- algebra and distances --------------------------------------------------------------------------
def test_and_or_invert_elementwise():
    m, o = two_layer(), other_layer()
    both = m & o
    assert both["a"].tolist() == [[True, False, False], [False, True, False]]
    assert both["b"].tolist() == [False, False, True, False]
    either = m | o
    assert either["a"].tolist() == [[True, True, True], [True, True, False]]
    assert either["b"].tolist() == [True, False, True, True]
    inv = ~m
    assert inv["a"].tolist() == [[False, True, False], [False, False, True]]
    assert inv["b"].tolist() == [True, True, False, True]
    assert inv.num_kept == m.num_total - m.num_kept


def test_algebra_returns_new_masks_and_leaves_operands_alone():
    m, o = two_layer(), other_layer()
    _ = m & o, m | o, ~m
    assert m == two_layer() and o == other_layer()
    assert isinstance(m & o, Mask) and isinstance(~m, Mask)


def test_hamming_distances():
    m, o = two_layer(), other_layer()
    assert m.hamming(m) == 0
    assert m.normalized_hamming(m) == 0.0
    assert m.hamming(~m) == m.num_total == 10
    assert m.normalized_hamming(~m) == 1.0
    # a differs at (0,1),(0,2),(1,0); b differs at 0 and 3 -> 5
    assert m.hamming(o) == 5
    assert o.hamming(m) == 5
    assert m.normalized_hamming(o) == pytest.approx(0.5)


def test_overlap_iou_hand_computed():
    m, o = two_layer(), other_layer()
    # intersection: a 2, b 1 = 3; union: a 5, b 3 = 8
    assert m.overlap(o) == pytest.approx(3 / 8)
    assert m.iou(o) == pytest.approx(3 / 8)
    assert m.overlap(m) == 1.0
    assert m.overlap(~m) == 0.0


def test_overlap_of_two_empty_masks_is_one():
    empty = Mask({"w": torch.zeros(3, dtype=torch.bool)})
    assert empty.overlap(empty) == 1.0


@pytest.mark.parametrize("op", ["and", "or", "hamming", "overlap"])
def test_layout_mismatch_names_the_parameter(op):
    m = two_layer()
    renamed = Mask({"a": m["a"], "c": m["b"]})
    reshaped = Mask({"a": m["a"].reshape(3, 2), "b": m["b"]})

    def run(x, y):
        return {"and": lambda: x & y, "or": lambda: x | y,
                "hamming": lambda: x.hamming(y), "overlap": lambda: x.overlap(y)}[op]()

    with pytest.raises(MaskError, match=r"'b'.*'c'"):
        run(m, renamed)
    with pytest.raises(MaskError, match=r"shape of 'a'"):
        run(m, reshaped)


def test_algebra_with_non_mask_raises():
    with pytest.raises(MaskError, match="expected a Mask"):
        two_layer().hamming({"a": torch.ones(2, 3)})  # type: ignore[arg-type]


# --- model interaction ------------------------------------------------------------------------------
def test_check_fits_returns_the_model_parameters():
    model = tiny_mlp()
    params = Mask.dense(model).check_fits(model)
    assert list(params) == ["0.weight", "2.weight"]
    assert params["0.weight"] is model[0].weight
    assert params["2.weight"] is model[2].weight


def test_check_fits_unknown_name():
    model = tiny_mlp()
    m = Mask({"0.weight": torch.ones(5, 4), "nope.weight": torch.ones(3)})
    with pytest.raises(MaskError, match=r"nope\.weight"):
        m.check_fits(model)


def test_check_fits_wrong_shape_names_the_parameter():
    model = tiny_mlp()
    m = Mask({"0.weight": torch.ones(5, 4), "2.weight": torch.ones(5, 3)})
    with pytest.raises(MaskError, match=r"2\.weight: mask \(5, 3\) vs parameter \(3, 5\)"):
        m.check_fits(model)


def test_apply_zeroes_exactly_the_pruned_entries():
    model = tiny_mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    mask = Mask({"0.weight": torch.rand(5, 4, generator=g) < 0.5, "2.weight": torch.rand(3, 5, generator=g) < 0.5})
    assert 0 < mask.num_kept < mask.num_total
    out = mask.apply_(model)
    assert out is model
    for name, p in model.named_parameters():
        if name in mask:
            keep = mask[name]
            assert torch.equal(p[keep], before[name][keep])  # kept values unchanged
            assert torch.all(p[~keep] == 0)  # pruned values zeroed
        else:
            assert torch.equal(p, before[name])  # biases untouched
    # the original weights were nonzero, so the nonzero pattern now equals the mask
    assert Mask.from_nonzero({n: model.get_parameter(n) for n in mask}) == mask


def test_apply_refuses_a_misfit_mask_without_touching_the_model():
    model = tiny_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    bad = Mask({"0.weight": torch.zeros(5, 4), "2.weight": torch.zeros(2, 2)})
    with pytest.raises(MaskError):
        bad.apply_(model)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


# --- persistence ------------------------------------------------------------------------------------
def random_mask(seed: int = 0) -> Mask:
    g = torch.Generator().manual_seed(seed)
    return Mask({
        "odd": torch.rand(7, 3, generator=g) < 0.5,  # 21 bits: padding in the last byte
        "conv": torch.rand(2, 3, 3, 1, generator=g) < 0.3,
        "one": torch.tensor([True]),
        "scalar": torch.tensor(True),
    })


def test_bytes_round_trip():
    m = random_mask()
    back = Mask.from_bytes(m.to_bytes())
    assert back == m
    assert list(back) == list(m)
    assert back["odd"].shape == (7, 3)
    assert back["scalar"].shape == ()


def test_save_load_round_trip(tmp_path):
    m = random_mask(3)
    path = tmp_path / "deep" / "dir" / "mask.safetensors"
    m.save(path)
    assert Mask.load(path) == m
    assert Mask.load(str(path)) == m


def test_save_overwrites_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "mask.safetensors"
    random_mask(0).save(path)
    random_mask(1).save(path)
    assert Mask.load(path) == random_mask(1)
    assert os.listdir(tmp_path) == ["mask.safetensors"]


def test_saved_file_is_bit_packed(tmp_path):
    g = torch.Generator().manual_seed(0)
    m = Mask({"w": torch.rand(1000, 1000, generator=g) < 0.5})
    path = tmp_path / "big.safetensors"
    m.save(path)
    size = path.stat().st_size
    assert 125_000 <= size < 130_000  # 1 bit per entry plus a small header
    assert Mask.load(path) == m


def test_truncated_file_is_corrupt(tmp_path):
    data = random_mask().to_bytes()
    path = tmp_path / "mask.safetensors"
    for cut in (4, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(MaskError, match="corrupt"):
            Mask.load(path)


def test_garbage_file_is_corrupt(tmp_path):
    path = tmp_path / "mask.safetensors"
    path.write_bytes(b"this is not a mask file at all, just some text")
    with pytest.raises(MaskError, match=r"corrupt.*mask\.safetensors|mask\.safetensors.*corrupt"):
        Mask.load(path)
    with pytest.raises(MaskError, match="corrupt"):
        Mask.from_bytes(b"")


def test_foreign_safetensors_file_is_rejected():
    from safetensors.torch import save

    data = save({"x": torch.zeros(3)})
    with pytest.raises(MaskError, match="not a ticketlab mask"):
        Mask.from_bytes(data)


def _with_header(data: bytes, edit) -> bytes:
    """Rewrite a safetensors header, keeping the tensor bytes."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def test_metadata_that_disagrees_with_the_data_is_corrupt():
    m = Mask({"w": torch.ones(7, 3, dtype=torch.bool)})  # 21 bits -> 3 bytes
    data = m.to_bytes()
    assert Mask.from_bytes(_with_header(data, lambda h: None)) == m  # the rewrite itself is harmless

    def grow(h):  # claims 40 entries but only 3 bytes (24 bits) are stored
        h["__metadata__"]["shapes"] = json.dumps({"w": [8, 5]})

    def shrink(h):  # claims 2 entries: the file does not hold what the header says
        h["__metadata__"]["shapes"] = json.dumps({"w": [2]})

    def rename(h):  # shapes name a tensor that is not stored
        h["__metadata__"]["shapes"] = json.dumps({"v": [7, 3]})

    for edit in (grow, shrink, rename):
        with pytest.raises(MaskError, match="corrupt"):
            Mask.from_bytes(_with_header(data, edit))


def test_load_missing_file(tmp_path):
    with pytest.raises(MaskError, match="does not exist"):
        Mask.load(tmp_path / "absent.safetensors")


def test_mask_error_is_a_value_error():
    assert issubclass(MaskError, ValueError)
