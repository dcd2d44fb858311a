"""Tropical geometry of (Affine, ReLU, Affine) networks (analysis/tropical.py) and ``ticketlab tropical``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ticketlab.analysis.tropical import (TropicalError, TropicalNet, _hull_vertices, boundary_points, geometry,
                                         hull_polygon, normalise_polygon, polygon_area, polygon_hausdorff, polygon_iou,
                                         shape_distance, zonotope_points, zonotope_vertices_2d, zonotope_vertices_3d)
from ticketlab.models import build_model


def _net(n_in: int = 2, hidden: int = 12, out: int = 2, seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n_in, hidden, bias=bias), nn.ReLU(), nn.Linear(hidden, out, bias=bias)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()  # weights of both signs and sizes
    return net


def _same_hull(a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> bool:
    """Two point sets have the same convex hull: equal support values in many directions, which
    include every facet normal of both hulls."""
    from scipy.spatial import ConvexHull

    rng = np.random.default_rng(0)
    dirs = [rng.normal(size=(500, a.shape[1]))]
    for pts in (a, b):
        try:
            dirs.append(ConvexHull(pts).equations[:, :-1])
        except Exception:
            pass
    D = np.concatenate(dirs)
    scale = max(1.0, np.abs(a).max(), np.abs(b).max())
    return float(np.abs((a @ D.T).max(0) - (b @ D.T).max(0)).max()) <= tol * scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_f1_minus_f2_is_t1_minus_t2_to_machine_precision(seed):
    net = _net(n_in=3, hidden=20, out=4, seed=seed)
    for classes in [(0, 1), (2, 0), (3, 1)]:
        t = TropicalNet.of(net, classes)
        x = np.random.default_rng(seed).normal(scale=3.0, size=(200, 3))
        with torch.no_grad():
            out = net(torch.tensor(x)).numpy()
        assert np.allclose(t.f(x), out, atol=1e-12, rtol=0)
        T1, T2 = t.tropical(x)
        f = out[:, classes[0]] - out[:, classes[1]]
        assert np.abs((T1 - T2) - f).max() <= 1e-12 * max(1.0, np.abs(f).max())
        w1, w2 = t.weights
        assert (w1 >= 0).all() and (w2 >= 0).all()
        assert np.allclose(w1 - w2, t.B[classes[0]] - t.B[classes[1]], atol=0)


def test_tropical_polynomials_are_support_functions_of_the_lifted_zonotopes():
    """T_k(x) = max over the lifted zonotope P_k of <v, (x, 1)>, with P_k's vertices enumerated."""
    net = _net(hidden=30, seed=3)
    g = geometry(net)
    x = np.random.default_rng(1).normal(scale=2.0, size=(300, 2))
    T1, T2 = g.net.tropical(x)
    h1, h2 = g.support(x)
    assert np.abs(h1 - T1).max() <= 1e-10 * max(1, np.abs(T1).max())
    assert np.abs(h2 - T2).max() <= 1e-10 * max(1, np.abs(T2).max())


def test_on_the_decision_boundary_the_lifted_support_values_are_equal():
    """At x with f_1(x) = f_2(x) (bisection), h_P1(x, 1) = h_P2(x, 1), and the face of conv(P1 u P2)
    exposed by (x, 1) holds vertices of both zonotopes (x lies on the tropical hypersurface of
    max(T1, T2)); off the boundary the larger support value is the winning class."""
    net = _net(hidden=25, seed=4)
    g = geometry(net)
    pts = boundary_points(g.net, [-4, -4], [4, 4], n=40, seed=0)
    assert len(pts) >= 20
    assert np.abs(g.net.margin(pts)).max() < 1e-9
    h1, h2 = g.support(pts)
    scale = np.abs(np.concatenate([h1, h2])).max()
    assert np.abs(h1 - h2).max() <= 1e-8 * max(1.0, scale)
    X = np.concatenate([pts, np.ones((len(pts), 1))], axis=1)
    top = np.maximum(h1, h2)
    tol = 1e-7 * max(1.0, scale)
    assert ((X @ g.P1.T).max(1) >= top - tol).all() and ((X @ g.P2.T).max(1) >= top - tol).all()
    x = np.random.default_rng(5).normal(scale=3, size=(200, 2))
    h1, h2 = g.support(x)
    m = g.net.margin(x)
    far = np.abs(m) > 1e-6
    assert (np.sign(h1 - h2)[far] == np.sign(m)[far]).all()


@pytest.mark.parametrize("p", [1, 2, 4, 7, 11])
def test_constructed_zonotopes_have_the_hull_of_all_subset_sums(p):
    rng = np.random.default_rng(p)
    G = rng.normal(size=(p, 3))
    brute = zonotope_points(G)
    assert _same_hull(_hull_vertices(brute), _hull_vertices(zonotope_vertices_3d(G)))
    assert _same_hull(hull_polygon(brute[:, :2]), zonotope_vertices_2d(G[:, :2]))
    if p >= 3:  # generic generators: the very same vertex sets
        a = {tuple(v) for v in np.round(_hull_vertices(brute), 8)}
        b = {tuple(v) for v in np.round(_hull_vertices(zonotope_vertices_3d(G)), 8)}
        assert a == b


def test_zonotope_construction_handles_pruned_generators():
    """Zero rows, parallel rows and coplanar generators (pruned weights put generators on
    coordinate planes): still the hull of all subset sums."""
    rng = np.random.default_rng(7)
    G = rng.normal(size=(12, 3))
    G[:4, 1] = 0      # first input weight pruned: generators in the plane y = 0
    G[4:6, 0] = 0
    G[6, :2] = 0      # a bias-only unit
    G[7] = 2.5 * G[8]  # parallel
    G[9] = -G[10]     # anti-parallel
    G[11] = 0         # a dead unit
    brute = zonotope_points(G)
    assert _same_hull(_hull_vertices(brute), _hull_vertices(zonotope_vertices_3d(G)))
    assert _same_hull(hull_polygon(brute[:, :2]), zonotope_vertices_2d(G[:, :2]))
    G[:, 2] = 0       # flat (bias-free) lifted zonotope
    assert _same_hull(_hull_vertices(zonotope_points(G)), _hull_vertices(zonotope_vertices_3d(G)))


def test_sorted_angle_walk_is_counter_clockwise_and_convex():
    G = np.random.default_rng(3).normal(size=(60, 2))
    V = zonotope_vertices_2d(G)
    assert len(V) == 120  # 60 generic generators: 2p vertices
    e = np.roll(V, -1, axis=0) - V
    turn = e[:, 0] * np.roll(e[:, 1], -1) - e[:, 1] * np.roll(e[:, 0], -1)
    assert (turn > 0).all()
    assert np.isclose(polygon_area(V), polygon_area(hull_polygon(V)))


def test_bias_free_zonotopes_are_centred_where_the_theory_says():
    """Without biases ReLU(z) = (z + |z|) / 2, so Z_k is centrally symmetric about (1/2) sum_u w_k[u] a_u,
    the centres differ by (1/2)(B_1 - B_2) A, and the lifted zonotopes are flat at height 0."""
    net = _net(hidden=15, seed=6, bias=False)
    g = geometry(net)
    t = g.net
    w1, w2 = t.weights
    for Z, w in ((g.Z1, w1), (g.Z2, w2)):
        centre = 0.5 * (w[:, None] * t.A).sum(0)
        mirrored = 2 * centre - Z
        assert _same_hull(Z, mirrored)
        assert np.allclose(Z.mean(0), centre, atol=1e-9)  # symmetric vertex set: its mean is the centre
    assert np.allclose(g.Z1.mean(0) - g.Z2.mean(0), 0.5 * (t.B[0] - t.B[1]) @ t.A, atol=1e-9)
    assert np.allclose(g.P1[:, 2], 0) and np.allclose(g.P2[:, 2], 0)
    assert g.upper_edges == []  # a flat lifted hull: one face, no subdivision
    x = np.random.default_rng(0).normal(size=(50, 2))
    T1, T2 = t.tropical(x)
    assert np.allclose(T1 - T2, t.margin(x), atol=1e-12)


def test_the_paper_zonotopes_are_ours_moved_by_a_common_vector():
    """Alfarra et al. write the zonotopes with segments [A+_u, A-_u] scaled by w_k and shifts
    (B-_1 + B+_2) A- and (B+_1 + B-_2) A-: both are ours plus (|B_1| + |B_2|) A- (bias-free)."""
    net = _net(hidden=8, seed=8, bias=False)
    t = TropicalNet.of(net)
    Am = np.maximum(-t.A, 0)
    Bp, Bm = np.maximum(t.B, 0), np.maximum(-t.B, 0)
    w1, w2 = t.weights
    shift = (np.abs(t.B[0]) + np.abs(t.B[1])) @ Am
    for w, s in ((w1, (Bm[0] + Bp[1]) @ Am), (w2, (Bp[0] + Bm[1]) @ Am)):
        # sum_u w_u [A+_u, A-_u] = sum_u w_u A-_u + sum_u [0, w_u (A+_u - A-_u)]
        paper = zonotope_points(w[:, None] * t.A, offset=s + w @ Am)
        ours = zonotope_points(w[:, None] * t.A, offset=shift)
        assert _same_hull(hull_polygon(paper), hull_polygon(ours))


def test_mlp_with_one_hidden_layer_is_accepted_and_others_are_refused():
    mlp = build_model("mlp", (2,), 2, hidden=[8])
    assert geometry(mlp).P1.shape[1] == 3
    seq = nn.Sequential(nn.Flatten(), nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3))
    TropicalNet.of(seq, (0, 2))
    bad = [build_model("mlp", (2,), 2, hidden=[8, 8]), build_model("mlp", (2,), 2, hidden=[]),
           nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)), nn.Linear(2, 2),
           nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))]
    for model in bad:
        with pytest.raises(TropicalError, match=r"supports \(Affine, ReLU, Affine\) networks only"):
            TropicalNet.of(model)
    with pytest.raises(TropicalError, match="2-D input"):
        geometry(_net(n_in=3))
    with pytest.raises(TropicalError, match="two different outputs"):
        TropicalNet.of(seq, (1, 1))


def test_shape_distance_is_invariant_to_translation_and_scale_only():
    P = zonotope_vertices_2d(np.random.default_rng(2).normal(size=(9, 2)))
    same = shape_distance(3.7 * P + np.array([5.0, -2.0]), P)
    assert same["iou"] == pytest.approx(1.0, abs=1e-9) and same["hausdorff"] == pytest.approx(0.0, abs=1e-9)
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    turned = shape_distance(P @ R.T, P)
    assert turned["iou"] < 0.999  # orientation matters: it is what the decision boundary sees
    N = normalise_polygon(P)
    assert polygon_area(N) == pytest.approx(1.0)
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])
    shifted = square + np.array([0.5, 0.0])
    assert polygon_iou(square, shifted) == pytest.approx(0.5 / 1.5)
    assert polygon_hausdorff(square, shifted) == pytest.approx(0.5)
    flat = shape_distance(np.array([[0, 0], [1, 1.0]]), P)
    assert np.isnan(flat["iou"]) and np.isnan(flat["hausdorff"])


def test_tropical_procedure_runs_resumes_and_reports(tmp_path):
    from ticketlab.config import TrainConfig, config_hash
    from ticketlab.experiments.tropical import TropicalConfig, run_tropical, tropical_report
    from ticketlab.store import Store

    cfg = TropicalConfig(samples=100, hidden=8, kept=(0.5,), seeds=(0,),
                         train=TrainConfig(optimizer="adam", lr=0.02, batch_size=25, steps="3ep", eval_every="3ep"))
    store = Store(tmp_path)
    rows = run_tropical(cfg, store, device="cpu", progress=False, log=lambda _: None)
    assert [(r["kept"], r["variant"]) for r in rows] == [(1.0, "dense"), (0.5, "ticket"), (0.5, "reinit"),
                                                         (0.5, "pruned")]
    assert rows[0]["iou"] == pytest.approx(1.0) and rows[0]["agreement"] == 1.0
    assert rows[3]["density"] == pytest.approx(0.5, abs=0.05)
    assert run_tropical(cfg, store, device="cpu", progress=False, log=lambda _: None) == rows
    run = store.run(config_hash(cfg))
    text, pngs = tropical_report([run], tmp_path / "report.png")
    assert "| 50 | ticket |" in text and all(p.exists() for p in pngs)


def test_tropical_source_takes_an_imp_run_and_refuses_other_shapes(tmp_path):
    from ticketlab.config import ConfigError, DataConfig, IMPConfig, ModelConfig, TrainConfig, config_hash
    from ticketlab.experiments.imp import run_imp
    from ticketlab.experiments.tropical import TropicalConfig, run_tropical
    from ticketlab.store import Store

    store = Store(tmp_path)
    train = TrainConfig(optimizer="adam", lr=0.01, batch_size=32, steps="2ep", eval_every="1ep")
    data = DataConfig(name="synthetic_mlp", options={"n_train": 128, "n_test": 64, "dim": 2})
    ok = IMPConfig(data=data, model=ModelConfig(name="mlp", options={"hidden": [8]}), train=train, levels=0,
                   baselines=())
    run_imp(ok, store, device="cpu", progress=False, log=lambda _: None)
    rows = run_tropical(TropicalConfig(source=config_hash(ok), kept=(0.5,)), store, device="cpu", progress=False,
                        log=lambda _: None)
    assert [r["variant"] for r in rows] == ["dense", "ticket", "reinit", "pruned"]
    deep = IMPConfig(data=data, model=ModelConfig(name="mlp", options={"hidden": [8, 8]}), train=train, levels=0,
                     baselines=())
    run_imp(deep, store, device="cpu", progress=False, log=lambda _: None)
    with pytest.raises(TropicalError, match=r"\(Affine, ReLU, Affine\)"):
        run_tropical(TropicalConfig(source=config_hash(deep), kept=(0.5,)), store, device="cpu", progress=False,
                     log=lambda _: None)
    with pytest.raises(ConfigError, match="--source takes the data"):
        TropicalConfig(source=config_hash(ok), hidden=16)


def test_tropical_command_writes_the_report(tmp_path, capsys):
    from ticketlab.cli import main

    argv = ["tropical", "--toy", "circles", "--samples", "60", "--hidden", "6", "--kept", "0.5", "--seeds", "0",
            "--steps", "2ep", "--eval-every", "1ep", "--batch-size", "20", "--runs-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| 50 | ticket |" in out and "report_shape.png" in out
    assert len(list(tmp_path.glob("*/report.png"))) == 1
