"""Reports: exact tables (Markdown) and plots of stored runs.

One report function per kind of run, ``<kind>_report(runs, plot) -> (markdown, [png, ...])``, names
its main plot ``plot`` (other pictures go beside it); the experiment records
(``experiments/registry.py``) say which function reports which kind.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Run

Report = tuple[str, list[Path]]


def _save(fig, path: Path) -> Path:
    """Write a figure as PNG atomically (temp file, rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


BRANCH_LABELS = {"ticket": "winning ticket", "reinit": "random reinit", "random": "random mask"}


def imp_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one line per level: remaining %, ticket and baseline accuracies."""
    by_level: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_level[r["level"]][r["branch"]] = r
    branches = [b for b in ("reinit", "random") if any(b in v for v in by_level.values())]
    head = ["level", "remaining %", "ticket final acc", "ticket acc @ early stop", "early-stop it", "ticket max acc"]
    head += [f"{b} final acc" for b in branches] + [f"{b} early-stop it" for b in branches]
    head += ["inference FLOPs / dense", "training FLOPs to here / one dense run"]
    connectivity = any("effective_density" in r for r in rows)  # runs from before it was recorded lack it
    if connectivity:
        head += ["ticket effective density", "collapsed layers"]
    structure = any("empty_channel_fraction" in r for r in rows)  # recorded since structured tickets (issue 18)
    if structure:
        head += ["empty channels %", "kept in dense blocks %", "shrunk params / dense", "shrunk FLOPs / dense"]
    spent = 0.0  # IMP's cost grows with every level trained, baselines excluded
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for level in sorted(by_level):
        t = by_level[level].get("ticket")
        if t is None:
            continue
        cells = [str(level), f"{t['remaining_percent']:.2f}", f"{t['final_test_accuracy']:.4f}",
                 f"{t['test_accuracy_at_early_stop']:.4f}", str(t["early_stop_step"]), f"{t['max_test_accuracy']:.4f}"]
        for b in branches:
            r = by_level[level].get(b)
            cells.append(f"{r['final_test_accuracy']:.4f}" if r else "")
        for b in branches:
            r = by_level[level].get(b)
            cells.append(str(r["early_stop_step"]) if r else "")
        if "forward_flops" in t:
            spent += t["unit_training_flops"] / t["dense_run_training_flops"]
            cells += [f"{t['forward_flops'] / t['forward_flops_dense']:.3f}", f"{spent:.2f}"]
        else:  # runs from before FLOPs were recorded
            cells += ["", ""]
        if connectivity:
            eff = t.get("effective_density")
            cells += ["" if eff is None else f"{eff:.4f}",
                      ", ".join(t.get("collapsed_layers", [])) or ("none" if "collapsed_layers" in t else "")]
        if structure:
            if "empty_channel_fraction" in t:
                pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
                cells += [pct(t["empty_channel_fraction"]), pct(t["block_nonzero_fraction"]),
                          f"{t['shrunk_params'] / t['params_dense']:.3f}",
                          f"{t['shrunk_flops'] / t['flops_dense']:.3f}" if t["flops_dense"] else ""]
            else:
                cells += ["", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def early_stop_points(rows: Sequence[dict[str, Any]]) -> list[tuple[float, int, bool]]:
    """(remaining %, early-stop iteration, informative) per row, informative False where the minimum of
    the validation loss is at the last evaluation (``final_step``): training never turned there, so
    the "early-stop iteration" is only the run's length."""
    return [(r["remaining_percent"], r["early_stop_step"],
             r.get("final_step") is None or r["early_stop_step"] < r["final_step"]) for r in rows]


def plot_imp(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path,
             metric: str = "final_test_accuracy") -> Path:
    """Accuracy vs. remaining weights (log scale, shrinking to the right) per run and branch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_es) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"ticket": "-o", "reinit": "--s", "random": ":^"}
    for label, rows in runs:
        dense = [r for r in rows if r["level"] == 0 and r["branch"] == "ticket"]
        for branch in ("ticket", "reinit", "random"):
            branch_rows = [r for r in rows if r["branch"] == branch]
            if not branch_rows:
                continue
            if branch != "ticket":
                branch_rows = dense + branch_rows  # baselines start from the same dense network
            pts = sorted(((r["remaining_percent"], r[metric], r["early_stop_step"]) for r in branch_rows),
                         reverse=True)
            name = f"{label}: {BRANCH_LABELS[branch]}" if len(runs) > 1 else BRANCH_LABELS[branch]
            ax_acc.plot([p[0] for p in pts], [p[1] for p in pts], styles[branch], label=name, markersize=4)
            line, = ax_es.plot([p[0] for p in pts], [p[2] for p in pts], styles[branch], label=name, markersize=4)
            last = [(x, y) for x, y, said in early_stop_points(branch_rows) if not said]
            if last:  # the minimum is at the last evaluation: early stopping says nothing there
                ax_es.plot([x for x, _ in last], [y for _, y in last], "o", markersize=9, markerfacecolor="none",
                           markeredgecolor=line.get_color())
    longest = max((r.get("final_step") or 0 for _, rows in runs for r in rows), default=0)
    if longest:  # the whole run's length: one epoch's difference looks like one
        ax_es.set_ylim(0, longest * 1.05)
    for ax, ylabel in ((ax_acc, metric.replace("_", " ")), (ax_es, "early-stop iteration (min val loss)")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("weights remaining (%)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_title("Accuracy vs. remaining weights")
    ax_es.set_title("Early-stop iteration (ring: the minimum is the last evaluation)")
    fig.tight_layout()
    return _save(fig, path)


def _prune_groups(rows: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Runs that differ only in their seed, grouped."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = (r.get("model", ""), r.get("dataset", ""), r["method"], r["distribution"], r["sanity"],
               round(r["requested_density"], 10))
        groups[key].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][5], kv[0][2], kv[0][3], kv[0][4])))


def prune_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of prune-at-init runs: mean and [min, max] over seeds of the test accuracy."""
    head = ["model", "data", "method", "distribution", "sanity", "density", "seeds", "test acc mean",
            "test acc [min, max]", "effective density", "collapsed layers", "FLOPs / dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, data, method, dist, sanity, density), rs in _prune_groups(rows).items():
        accs = [r["final_test_accuracy"] for r in rs]
        effs = [r.get("effective_density") for r in rs]
        eff = f"{sum(effs) / len(effs):.4g}" if None not in effs else ""  # None: not computable for the model
        collapsed = sorted({n for r in rs for n in r["collapsed_layers"]})
        lines.append("| " + " | ".join([
            model, data, method, dist, sanity, f"{density:g}", str(len(rs)), f"{sum(accs) / len(accs):.4f}",
            f"[{min(accs):.4f}, {max(accs):.4f}]", eff, ", ".join(collapsed) or "none",
            f"{sum(r['forward_flops'] / r['forward_flops_dense'] for r in rs) / len(rs):.4f}"
            if all("forward_flops" in r for r in rs) else "",
        ]) + " |")
    return "\n".join(lines)


def plot_prune(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test accuracy vs. density (log scale) per method and sanity check: mean, min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple, list[tuple[float, list[float]]]] = defaultdict(list)
    for (model, data, method, dist, sanity, density), rs in _prune_groups(rows).items():
        series[(method, dist, sanity)].append((density, [r["final_test_accuracy"] for r in rs]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {key[:2]: palette[i % len(palette)] for i, key in enumerate(sorted({k[:2] for k in series}))}
    for (method, dist, sanity), pts in sorted(series.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        means = [sum(a) / len(a) for _, a in pts]
        lo = [m - min(a) for m, (_, a) in zip(means, pts)]
        hi = [max(a) - m for m, (_, a) in zip(means, pts)]
        label = method + ("" if dist == "global" else f" ({dist})") + ("" if sanity == "none" else f", {sanity}")
        ax.errorbar(xs, means, yerr=[lo, hi], fmt="--o" if sanity != "none" else "-o", capsize=3,
                    markersize=4, label=label, color=colours[(method, dist)])  # one colour per method
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density (fraction of weights kept)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("Pruning at initialisation (mean, min-max over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def sparse_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of sparse-training runs: accuracy (mean, [min, max] over seeds) and FLOPs."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        density = round(r["density"], 4) if r["method"] != "dense" else 1.0
        groups[(r.get("model", ""), r.get("dataset", ""), density, r["method"], r["distribution"])].append(r)
    order = {"dense": 0, "static": 1, "set": 2, "rigl": 3, "gmp": 4}
    head = ["model", "data", "density", "method", "distribution", "seeds", "test acc mean", "test acc [min, max]",
            "training FLOPs / dense", "inference FLOPs / dense"]
    connectivity = any("effective_density" in r for r in rows)  # runs from before it was recorded lack it
    if connectivity:
        head += ["effective density (end)", "collapsed layers (end)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2], order.get(k[3], 9), k[4])):
        rs = groups[key]
        accs = [r["final_test_accuracy"] for r in rs]
        train = sum(r["training_flops_relative"] for r in rs) / len(rs)
        infer = sum(r["forward_flops_end"] / r["forward_flops_dense"] for r in rs) / len(rs)
        model, data, density, method, dist = key
        cells = [
            model, data, f"{density:g}", method, dist if method != "dense" else "-", str(len(rs)),
            f"{sum(accs) / len(accs):.4f}", f"[{min(accs):.4f}, {max(accs):.4f}]", f"{train:.3f}", f"{infer:.3f}",
        ]
        if connectivity:
            effs = [r.get("effective_density") for r in rs]
            cells += [f"{sum(effs) / len(effs):.4g}" if None not in effs else "",
                      ", ".join(sorted({n for r in rs for n in r.get("collapsed_layers", [])})) or "none"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sparse(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path) -> Path:
    """Per run: test accuracy and global density over training; per-layer density of the first
    run whose mask changed (GMP shrinking, RigL holding each layer constant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_den, ax_layer) = plt.subplots(1, 3, figsize=(16, 4.5))
    for label, history in runs:
        steps = [r["step"] for r in history]
        ax_acc.plot(steps, [r["test_accuracy"] for r in history], label=label)
        ax_den.plot(steps, [r.get("density", 1.0) for r in history], label=label)
    changing = next((h for _, h in runs if len({round(r.get("density", 1.0), 6) for r in h}) > 1), runs[0][1])
    layer_names = list(changing[0].get("layer_density", {}))
    for name in layer_names:
        ax_layer.plot([r["step"] for r in changing], [r["layer_density"][name] for r in changing], label=name)
    ax_acc.set_ylabel("test accuracy")
    ax_den.set_ylabel("density (fraction kept)")
    ax_layer.set_ylabel("layer density")
    ax_layer.set_title(f"per layer: {next(lbl for lbl, h in runs if h is changing)}")
    ax_acc.set_title("Test accuracy during training")
    ax_den.set_title("Global density during training")
    for ax in (ax_acc, ax_den, ax_layer):
        ax.set_xlabel("iteration")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def early_bird_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: where the ticket was drawn, accuracies, sizes and training FLOPs saved."""
    head = ["run", "kind", "sparsity (removed)", "drawn at epoch", "of epochs", "dense acc", "early-bird ticket acc",
            "full-training ticket acc", "params ticket / dense", "training FLOPs saved"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r.get("run", ""), r["kind"], f"{r['prune_ratio']:g}", str(r["drawn_epoch"]), str(r["epochs"]),
            f"{r['dense_test_accuracy']:.4f}", f"{r['ticket_test_accuracy']:.4f}",
            f"{r['full_ticket_test_accuracy']:.4f}", f"{r['ticket_parameters'] / r['dense_parameters']:.3f}",
            f"{100 * r['training_flops_saved']:.1f}%",
        ]) + " |")
    return "\n".join(lines)


def plot_distance_matrix(epochs: Sequence[int], matrix: Sequence[Sequence[float]], path: Path,
                         drawn: int | None = None) -> Path:
    """Heat map of mask distances between epochs (You et al.'s figure): the mask settles early."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(matrix, cmap="viridis", origin="lower",
                   extent=(epochs[0] - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5, epochs[-1] + 0.5))
    fig.colorbar(im, ax=ax, label="normalised Hamming distance")
    if drawn is not None:
        ax.axvline(drawn, color="white", linestyle="--", linewidth=1)
        ax.axhline(drawn, color="white", linestyle="--", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    ax.set_title("Mask distance between epochs" + (f" (ticket drawn at {drawn})" if drawn is not None else ""))
    fig.tight_layout()
    return _save(fig, path)


def _config(run: Run) -> dict[str, Any]:
    return run.read_json("config.json")["config"]


def _row(run: Run, cfg: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    return {"run": run.hash[:8], "model": cfg["model"]["name"], "dataset": cfg["data"]["name"], "seed": cfg["seed"],
            **summary}


def imp_seeds_table(rows_per_seed: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Markdown table over the seeds of one IMP setting: per level, the final test accuracy of the
    ticket and of each baseline as mean [min, max] over the seeds that reached the level."""
    by_level: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    remaining: dict[int, float] = {}
    for rows in rows_per_seed:
        for r in rows:
            by_level[r["level"]][r["branch"]].append(r["final_test_accuracy"])
            if r["branch"] == "ticket":
                remaining[r["level"]] = r["remaining_percent"]
    branches = [b for b in ("ticket", "reinit", "random") if any(b in v for v in by_level.values())]
    head = ["level", "remaining %", "seeds"] + [f"{b} final acc mean [min, max]" for b in branches]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(values: list[float]) -> str:
        return f"{sum(values) / len(values):.4f} [{min(values):.4f}, {max(values):.4f}]" if values else ""

    for level in sorted(by_level):
        got = by_level[level]
        lines.append("| " + " | ".join([str(level), f"{remaining.get(level, float('nan')):.2f}",
                                        str(len(got.get("ticket", [])))] + [cell(got.get(b, [])) for b in branches])
                     + " |")
    return "\n".join(lines)


def _seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs of one setting that differ only in their seed (``--seeds``), groups of two or more."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        cfg = dict(_config(run))
        cfg.pop("seed", None)
        groups[json.dumps(cfg, sort_keys=True)].append(run)
    return [sorted(g, key=lambda r: _config(r)["seed"]) for g in groups.values() if len(g) > 1]


def imp_report(runs: Sequence[Run], plot: Path) -> Report:
    """IMP runs: a table over the seeds of each setting run with several seeds, one table per run (a
    line per level), accuracy vs. remaining weights in one plot."""
    over_seeds = []
    for group in _seed_groups(runs):
        cfg = _config(group[0])
        label = (f"{cfg['model']['name']}/{cfg['data']['name']} reset={cfg['reset']}, over {len(group)} seeds "
                 f"({', '.join(str(_config(r)['seed']) for r in group)})")
        over_seeds.append(f"### {label}\n\n{imp_seeds_table([r.read_jsonl('levels.jsonl') for r in group])}")
    labelled = []
    for run in runs:
        cfg = _config(run)
        label = f"{run.hash[:8]} {cfg['model']['name']}/{cfg['data']['name']} reset={cfg['reset']}"
        if cfg.get("prune", {}).get("structure", "none") != "none":
            label += f" structure={cfg['prune']['structure']}"
        labelled.append((label, run.read_jsonl("levels.jsonl")))
    text = "\n\n".join([*over_seeds, *(f"### {label}\n\n{imp_table(rows)}" for label, rows in labelled)])
    return text, [plot_imp(labelled, plot)]


def plot_prune_run(label: str, summary: dict[str, Any], records: Sequence[dict[str, Any]], path: Path) -> Path:
    """One prune-at-init run: the kept fraction of each layer (where the method put the weights) and
    the test accuracy during training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_layers, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    layers = summary.get("layer_density") or {}
    ax_layers.bar(range(len(layers)), list(layers.values()), color="tab:blue")
    ax_layers.set_xticks(range(len(layers)), list(layers), rotation=30, ha="right", fontsize=8)
    ax_layers.axhline(summary.get("density", 0.0), color="black", linestyle=":", label="overall density")
    ax_layers.set_ylabel("fraction kept")
    ax_layers.set_title(f"{label}: kept fraction per layer")
    ax_layers.legend(fontsize=8)
    points = [(r["step"], r["test_accuracy"]) for r in records if r.get("test_accuracy") is not None]
    ax_curve.plot([p[0] for p in points], [p[1] for p in points], "-o", markersize=3)
    ax_curve.set_xlabel("iteration")
    ax_curve.set_ylabel("test accuracy")
    ax_curve.set_title(f"{label}: training after pruning")
    for ax in (ax_layers, ax_curve):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def prune_report(runs: Sequence[Run], plot: Path) -> Report:
    """Prune-at-init runs: one table over seeds; accuracy vs. density for two runs or more, the layer
    densities and training curve for one."""
    rows = [_row(run, _config(run), run.read_json("train", "summary.json")) for run in runs]
    if len(rows) > 1:
        plots = [plot_prune(rows, plot)]
    else:
        run = runs[0]
        plots = [plot_prune_run(f"{run.hash[:8]} {rows[0]['method']}", run.read_json("train", "summary.json"),
                                run.read_jsonl("train", "metrics.jsonl"), plot)]
    return f"### pruning at initialisation\n\n{prune_table(rows)}", plots


def sparse_report(runs: Sequence[Run], plot: Path) -> Report:
    """Sparse-training runs: accuracy and FLOPs table; accuracy and density during training."""
    rows, curves = [], []
    for run in runs:
        summary = run.read_json("train", "summary.json")
        rows.append(_row(run, _config(run), summary))
        curves.append((f"{run.hash[:8]} {summary['method']}", run.read_jsonl("train", "metrics.jsonl")))
    return f"### sparse training\n\n{sparse_table(rows)}", [plot_sparse(curves, plot)]


def early_bird_report(runs: Sequence[Run], plot: Path) -> Report:
    """Early-bird runs: where each ticket was drawn, and each run's mask-distance matrix beside ``plot``."""
    summaries = [(run, run.read_json("summary.json"), run.read_json("distance_matrix.json")) for run in runs]
    text = "### early-bird tickets\n\n" + early_bird_table([{"run": r.hash[:8], **s} for r, s, _ in summaries])
    return text, [plot_distance_matrix(dm["epochs"], dm["distances"], Path(plot).parent / f"distances_{r.hash[:8]}.png",
                                       drawn=s["drawn_epoch"]) for r, s, dm in summaries]


def supermask_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one line per supermask run: its setting, densities and accuracies."""
    head = ["run", "dataset", "model", "weight init", "dynamic scaling", "density (deterministic mask)",
            "expected density", "test acc, mean of N samples [min, max]", "deterministic test acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["run"], r["dataset"], r["model"], r["weight_init"], "yes" if r["dynamic_scaling"] else "no",
            f"{r['density']:.4f}", f"{r['expected_density']:.4f}",
            f"{r['test_accuracy']:.4f} (N={r['eval_samples']}) [{r['test_accuracy_min']:.4f}, "
            f"{r['test_accuracy_max']:.4f}]",
            f"{r['deterministic_test_accuracy']:.4f}",
        ]) + " |")
    return "\n".join(lines)


def plot_supermask(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path) -> Path:
    """Per run: test accuracy (one sampled mask per evaluation batch) after each epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, history in runs:
        ax.plot([r["epoch"] for r in history], [r["test_accuracy"] for r in history], marker="o", markersize=3,
                label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (sampled mask)")
    ax.set_title("Learned Bernoulli supermask: test accuracy per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def supermask_report(runs: Sequence[Run], plot: Path) -> Report:
    """Supermask runs: one table line per run; test accuracy per epoch of every run in one plot."""
    rows, curves = [], []
    for run in runs:
        cfg, summary = _config(run), run.read_json("summary.json")
        rows.append(_row(run, cfg, summary))
        curves.append((f"{run.hash[:8]} {cfg['weight_init']}" + (" dynamic" if cfg["dynamic_scaling"] else ""),
                       run.read_jsonl("metrics.jsonl")))
    return f"### learned Bernoulli supermask\n\n{supermask_table(rows)}", [plot_supermask(curves, plot)]
