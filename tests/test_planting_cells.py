"""Plant 'n' Seek cells computed as stacks (planting.cells) and stacked edge-popup: a cell's row and
a replicate's mask do not depend on the stack it is computed in, and agree with the solo procedures."""
import copy
import json
import random

import pytest
import torch
import torch.nn.functional as F

from ticketlab.planting import cells as cells_module
from ticketlab.planting.benchmark import Protocol, _splits, run_cell
from ticketlab.planting.cells import run_cells
from ticketlab.planting.plant import host_network, plant
from ticketlab.planting.targets import target_network
from ticketlab.planting.tasks import make_task
from ticketlab.pruning.edge_popup import train_edge_popup
from ticketlab.pruning import edge_popup_stacked as eps
from ticketlab.pruning.edge_popup_stacked import _rows_topk, _SegmentTopk, train_edge_popup_stacked
from ticketlab.pruning.edge_popup import topk_mask

TINY = Protocol(depth=4, width=24, samples=400, epochs=2, multishot_rounds=3, multishot_epochs=1)
CELLS = [(t, m, k, s) for t in ("relu", "circle") for s in (0, 1)
         for m, k in (("dense", 1.0), ("ticket", "ticket"), ("magnitude", 0.2), ("synflow100", "ticket"),
                      ("multishot_snip", 0.2), ("multishot_random", "ticket"), ("multishot_grasp", 0.2),
                      ("edgepopup", 0.2), ("edgepopup_anneal", "ticket"), ("gem", 0.2))]


def text(row):  # NaN-aware, exact: the row as JSON, without its timing
    return json.dumps({k: v for k, v in row.items() if k != "seconds"}, sort_keys=True)


@pytest.fixture(scope="module")
def stacked_rows():
    torch.set_num_threads(1)
    return run_cells(CELLS, TINY, stack_size=32)


def test_a_cells_row_does_not_depend_on_its_stack_or_its_neighbours(stacked_rows):
    order = list(range(len(CELLS)))
    random.Random(0).shuffle(order)
    small = run_cells([CELLS[i] for i in order], TINY, stack_size=3)  # other stacks, other neighbours
    assert [text(small[j]) for j in range(len(order))] == [text(stacked_rows[i]) for i in order]
    subset = run_cells(CELLS[5:8], TINY)  # a few cells alone
    assert [text(r) for r in subset] == [text(r) for r in stacked_rows[5:8]]


def test_run_cell_is_a_stack_of_one_and_gives_the_same_row(stacked_rows):
    for i in (4, 7, 13):  # multishot_snip, edgepopup, ... of both tasks
        assert text(run_cell(*CELLS[i], TINY)) == text(stacked_rows[i])


def test_rows_keep_exact_kept_counts_and_the_methods_meaning(stacked_rows):
    for (task, method, kept, seed), row in zip(CELLS, stacked_rows):
        assert (row["task"], row["method"], row["seed"]) == (task, method, seed)
        if method == "dense":
            assert row["density"] == 1.0
        elif method == "ticket":
            assert row["recall"] == 1.0 and row["precision"] == 1.0
        elif method == "gem":  # GEM-MINER: exactly round(kept * pool) of weights and biases
            assert abs(row["density"] - row["target_density"]) < 1e-3
        elif not method.startswith("edgepopup"):  # global selection: the pool's exact count
            pool = row["density"]
            assert abs(pool - row["target_density"]) < 1e-3, (method, pool, row["target_density"])


def test_multishot_trains_its_shared_first_round_once(monkeypatch):
    """Round 1 trains H under the full pool with seed * 1000 + 1: the same for every score and kept
    fraction of a (task, seed), so it is one replicate however many cells share it."""
    sizes = []
    real = cells_module.train_stacked

    def spy(models, *args, **kwargs):
        sizes.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(cells_module, "train_stacked", spy)
    cells = [("relu", m, k, 0) for m in ("multishot_snip", "multishot_magnitude") for k in (0.5, 0.2)]
    run_cells(cells, TINY)
    assert sizes == [1, 4, 4, 4]  # round 1 once; rounds 2, 3 per cell; then the weak training


def _host(task, seed, n=400):
    d = make_task(task, n=n, seed=seed)
    host = plant(target_network(task, 4), host_network(d.input_dim, d.output_dim, depth=4, width=40, seed=seed)).host
    return host, _splits(d, torch.device("cpu")), F.mse_loss if d.kind == "regression" else F.cross_entropy


def test_rows_topk_follows_topk_mask_row_by_row_ties_included():
    x = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.5], [0.0, 2.0, 2.0, 2.0, 2.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    ks = torch.tensor([2, 3, 5])
    out = _rows_topk(x, ks)
    for r in range(3):
        assert torch.equal(out[r], topk_mask(x[r], int(ks[r])))
    assert out.tolist()[0] == [True, True, False, False, False]  # a tie at the threshold: lowest index
    assert out.sum(1).tolist() == [2, 3, 5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_topk_follows_rows_topk_band_or_not(monkeypatch, dtype):
    """The all-segments top-k of stacked edge-popup (``_SegmentTopk``) against ``_rows_topk`` and
    ``topk_mask`` row by row and segment by segment: ties at the threshold, k = 0 (nothing kept), k = n,
    a good band, a band that fails (the fallback, with and without the guaranteed band), NaN bands."""
    gen = torch.Generator().manual_seed(0)
    segments, width = [(3, 50), (60, 200), (260, 7), (267, 1), (300, 390)], 705  # gaps between and after
    rows = 6
    x = torch.randint(0, 40, (rows, width), generator=gen).to(dtype) / 8  # many ties
    x[:, 400:500] = torch.rand(rows, 100, generator=gen, dtype=dtype)
    ks = torch.stack([torch.randint(0, n + 1, (rows,), generator=gen) for _, n in segments], 1)
    ks[0] = 0
    ks[1] = torch.tensor([n for _, n in segments])
    ks[2, 1] = 1
    fallbacks = []
    real_near = eps._kth_largest_near

    def near(*args):
        fallbacks.append(args[0].shape[0])
        return real_near(*args)

    monkeypatch.setattr(eps, "_kth_largest_near", near)
    topk = _SegmentTopk(segments, width)

    def check(mask, kth):
        mask = mask.clone()
        inside = torch.zeros(width, dtype=torch.bool)
        for j, (o, n) in enumerate(segments):
            inside[o:o + n] = True
            assert torch.equal(mask[:, o:o + n].bool(), _rows_topk(x[:, o:o + n], ks[:, j]))
            for r in range(rows):
                k = int(ks[r, j])
                want = topk_mask(x[r, o:o + n], k) if k > 0 else torch.zeros(n, dtype=torch.bool)
                assert torch.equal(mask[r, o:o + n].bool(), want)
                assert int(mask[r, o:o + n].sum()) == k
        assert torch.all(mask[:, ~inside] == 1)  # unmasked columns and padding
        return kth

    exact = check(*topk(x, ks))  # no band: kthvalue throughout
    assert topk.count is None
    assert exact[1].tolist() == [float("-inf")] * len(segments) and exact[0].tolist() == [float("inf")] * len(segments)
    moved = torch.full((rows, 1), 0.3, dtype=dtype)
    check(*topk(x, ks, exact, torch.full((rows, len(segments)), 0.05, dtype=dtype), moved))  # the band holds it
    zeros = [int(c) for c in (ks == 0).sum(0) if c]
    assert topk.count is not None and fallbacks == zeros  # only k = 0 falls back
    fallbacks.clear()
    check(*topk(x, ks, exact + 0.8, torch.zeros(rows, 1, dtype=dtype), moved))  # wrong band: falls back ...
    assert sum(fallbacks) > rows
    check(*topk(x, ks, exact + 0.8, torch.zeros(rows, 1, dtype=dtype)))  # ... in full without a bound
    delta = torch.full((rows, 1), 0.2, dtype=dtype)
    delta[3] = float("nan")  # a NaN row (a NaN score) is computed in full
    check(*topk(x, ks, exact, delta, delta))
    xn = x.clone()
    xn[4, 10] = float("nan")  # a NaN entry: ranked as _rows_topk ranks it (NaN bound, full kthvalue)
    mask, _ = topk(xn, ks, exact, delta, delta)
    for j, (o, n) in enumerate(segments):
        assert torch.equal(mask[:, o:o + n].bool(), _rows_topk(xn[:, o:o + n], ks[:, j]))


def test_stacked_edge_popup_replicate_is_independent_of_its_neighbours():
    torch.set_num_threads(1)
    hosts = [_host("relu", s) for s in range(4)]
    models, data, loss = [h for h, _, _ in hosts], [d for _, d, _ in hosts], hosts[0][2]
    four = train_edge_popup_stacked(models, data, [0.5, 0.1, 0.03, 0.1], [0, 1, 2, 3], epochs=2,
                                    anneal=[False, True, False, True], loss=loss, device="cpu")
    alone = train_edge_popup_stacked(models[2:3], data[2:3], [0.03], [2], epochs=2, loss=loss, device="cpu")
    assert all(torch.equal(four[2].mask[n], alone[0].mask[n]) for n in alone[0].mask)
    for p, q in zip(four[2].model.parameters(), alone[0].model.parameters()):
        assert torch.equal(p, q)
    for rec, d in zip(four, [0.5, 0.1, 0.03, 0.1]):  # exact kept counts per tensor, weights = w * mask
        for name, m in rec.mask.items():
            assert int(m.sum()) == min(m.numel(), max(1, round(d * m.numel())))
        params = dict(rec.model.named_parameters())
        assert all(torch.all(params[n][~m] == 0) for n, m in rec.mask.items())


@pytest.mark.parametrize("task, anneal", [("helix", True), ("circle", False)])
def test_stacked_edge_popup_agrees_with_the_solo_trainer(task, anneal):
    """Same scores init, batches, schedule and update rule as ``train_edge_popup``: the final masks
    agree (measured: identical after 2 epochs on both tasks); the stacked backward pass sums in
    another order, so equality is not guaranteed in general: at most 0.1% of entries may differ."""
    torch.set_num_threads(1)
    host, data, loss = _host(task, 0)
    solo = train_edge_popup(copy.deepcopy(host), data, 0.1, epochs=2, lr=0.1, momentum=0.9, weight_decay=5e-4,
                            batch_size=32, anneal=anneal, seed=0, include_bias=True, weight_init="keep",
                            bias_init="keep", device="cpu", loss=loss)["mask"]
    (rec,) = train_edge_popup_stacked([host], [data], [0.1], [0], epochs=2, anneal=anneal, loss=loss, device="cpu")
    differ = sum(int((solo[n] != rec.mask[n]).sum()) for n in solo)
    assert set(solo) == set(rec.mask) and rec.mask.num_kept == solo.num_kept
    assert differ <= 0.001 * solo.num_total


def test_stacked_edge_popup_drops_a_diverging_replicate_and_keeps_the_others_exact():
    torch.set_num_threads(1)
    hosts = [_host("circle", s) for s in range(3)]
    models, data, loss = [h for h, _, _ in hosts], [d for _, d, _ in hosts], hosts[0][2]
    broken = copy.deepcopy(models[1])
    with torch.no_grad():
        next(broken.parameters())[0, 0] = float("nan")
    recs = train_edge_popup_stacked([models[0], broken, models[2]], data, [0.2] * 3, [0, 1, 2], epochs=1, loss=loss,
                                    device="cpu")
    assert recs[1].diverged is not None and "loss" in recs[1].diverged and recs[1].mask is None
    clean = train_edge_popup_stacked([models[0], models[2]], [data[0], data[2]], [0.2] * 2, [0, 2], epochs=1,
                                     loss=loss, device="cpu")
    for got, want in zip((recs[0], recs[2]), clean):
        assert got.diverged is None and all(torch.equal(got.mask[n], want.mask[n]) for n in want.mask)


def test_bad_stack_size_is_refused():
    with pytest.raises(ValueError, match="stack_size"):
        run_cells(CELLS[:1], TINY, stack_size=0)
