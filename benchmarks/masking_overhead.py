#!/usr/bin/env python
"""How much does keeping pruned weights at zero cost? One epoch of LeNet-300-100 on MNIST, timed
several ways on identical data, batches, initial weights and mask.

ticketlab's ``make_optimizer`` builds fused optimisers by default (``TrainConfig.fused_optimizer =
True``; False gives PyTorch's default implementation). The variants separate what the mask costs
from what the fused optimiser saves (all: batch 60, same seeded batch order, same optimiser
hyper-parameters):

  dense            plain PyTorch loop (forward, cross-entropy, zero_grad, backward, step) with the
                   optimiser a user writes, ``torch.optim.Adam/SGD(params, ...)``: the reference
  dense-fused      the same loop with the optimiser built with ``fused=True``
  trainer          ticketlab.training.Trainer with a Mask, library defaults (fused optimiser): the
                   masked path a ticketlab user runs (evaluation pushed past the epoch)
  trainer-nomask   the same Trainer with mask=None (fused optimiser): the Trainer without masking
  trainer-unfused  the Trainer with a Mask and TrainConfig(fused_optimizer=False)
  plain+foreach    the dense loop (default optimiser) plus ticketlab's masking op after each step,
                   ``torch._foreach_mul_(masked_params, float_masks)`` (exactly Trainer.reapply_mask)
  torch-prune      torch.nn.utils.prune.custom_from_mask on every Linear weight (a forward pre-hook
                   re-materialises weight = weight_orig * mask on every call), dense loop and optimiser
  trainer-maskgrad the Trainer with TrainConfig(mask_gradients=True) (gradients masked too; fused)

Per optimiser it prints a table and these ratios (medians of per-repeat ratios):

  1. ticketlab masked epoch / plain PyTorch dense epoch (trainer / dense), with TARGET <= 1.03
  2. masking cost at equal optimiser (fused):   trainer / dense-fused, trainer / trainer-nomask
  3. masking cost at equal optimiser (default): plain+foreach / dense, trainer-unfused / dense
  4. torch.nn.utils.prune / dense, and torch-prune / trainer

Line 1 compares what a ticketlab user runs with what a plain PyTorch user writes; it can pass
because the Trainer's fused optimiser saves more than the mask multiply costs. Lines 2 and 3 are
the cost of masking itself. ``--breakdown`` adds a per-phase timing of a masked step (batch,
forward, zero_grad, backward, optimiser step, mask multiply).

Variants are interleaved inside each repeat (the order rotates from repeat to repeat) and every
timed epoch starts from a fresh model after the same warm-up, so a noisy machine (another job on a
core) hits all variants alike. The reported ratio is the median over repeats of
time(a) / time(b) within the same repeat. After every timed epoch of a masked variant the script
asserts that all pruned weights are exactly zero.

Run from the repository root:

    python benchmarks/masking_overhead.py --threads 1          # 1 epoch, adam and sgd, 5 repeats
    python benchmarks/masking_overhead.py --iterations 200 --repeats 3 --optimizer adam
    python benchmarks/masking_overhead.py --threads 1 --breakdown   # per-phase costs too

Exit status 1 when a TARGET fails for any optimiser (line 1, and trainer / trainer-nomask <= 1.03 of
line 2, issue 22), 0 otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import ticketlab
from ticketlab.config import TrainConfig
from ticketlab.data import ArrayData, DataError, DataSplits, load_dataset
from ticketlab.masks import Mask
from ticketlab.models import build_model
from ticketlab.pruning.magnitude import imp_prune
from ticketlab.training import Trainer, make_optimizer

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data" / "mnist"
TARGET = 1.03
PRIMARY = "trainer"  # the variant the TARGET line judges: what a ticketlab user actually runs

# ---------------------------------------------------------------------------------------------
# setup shared by all variants


def load_data(root: Path) -> tuple[DataSplits, str]:
    try:
        splits = load_dataset("mnist", root)
        return splits, f"MNIST from {root}"
    except DataError as exc:
        print(f"NOTE: real MNIST not found ({exc.__class__.__name__}: {str(exc)[:120]}...);\n"
              f"      using synthetic MNIST-shaped random data (60000 x 1 x 28 x 28, 10 classes) instead.\n"
              f"      Timings do not depend on pixel values, so ratios remain meaningful.")
        g = torch.Generator().manual_seed(0)
        train = ArrayData(torch.randn(60_000, 1, 28, 28, generator=g), torch.randint(0, 10, (60_000,), generator=g))
        test = ArrayData(torch.randn(10_000, 1, 28, 28, generator=g), torch.randint(0, 10, (10_000,), generator=g))
        return DataSplits("mnist-synthetic", train, test, 10, (1, 28, 28)), "synthetic random data"


def fresh_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", (1, 28, 28), 10)


def make_mask(seed: int, density: float, kind: str) -> Mask:
    """Layer-wise mask keeping ``density`` of every Linear weight (magnitude of the init, or random)."""
    model = fresh_model(seed)
    dense = Mask.dense(model)
    if kind == "magnitude":
        weights = dict(model.named_parameters())
        return imp_prune(weights, dense, level=1, rate=1.0 - density, scope="layerwise")
    g = torch.Generator().manual_seed(seed + 1)
    return Mask({n: torch.rand(t.shape, generator=g) < density for n, t in dense.items()})


def batch_permutation(n: int, seed: int) -> torch.Tensor:
    """The permutation the Trainer uses for epoch 0, so every variant sees the very same batches."""
    try:
        from ticketlab.training import _batch_generator  # private, but it *is* the Trainer's order
        g = _batch_generator(seed, 1, 0)
    except ImportError:  # pragma: no cover - keeps the benchmark alive if the helper is renamed
        g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)


@dataclass
class Setup:
    splits: DataSplits          # train split + an empty test split (evaluation costs nothing)
    perm: torch.Tensor
    mask: Mask
    cfg: TrainConfig
    seed: int
    warmup: int
    iterations: int


def plain_batches(s: Setup, steps: int):
    """Batches exactly as Trainer.batch builds them: index_select with a slice of the permutation."""
    x_all, y_all, b = s.splits.train.x, s.splits.train.y, s.cfg.batch_size
    for step in range(steps):
        idx = s.perm[step * b:(step + 1) * b]
        yield x_all.index_select(0, idx), y_all.index_select(0, idx)


# ---------------------------------------------------------------------------------------------
# variants: each builds its state untimed, runs ``warmup`` steps, then returns the timed epoch's
# seconds and the trained model (for the zero check)


def _timed(fn: Callable[[], None]) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def torch_optimizer(params: list[nn.Parameter], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """The optimiser a plain PyTorch user writes, built directly from torch (not through ticketlab,
    whose make_optimizer is fused by default), with ``fused=True`` or PyTorch's default."""
    extra = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **extra)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def _plain_loop(s: Setup, model: nn.Module, after_step: Callable[[], None] | None,
                fused: bool = False) -> float:
    opt = torch_optimizer(list(model.parameters()), s.cfg, fused)
    model.train()

    def run(steps: int) -> None:
        for x, y in plain_batches(s, steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()

    run(s.warmup)
    return _timed(lambda: run(s.iterations))


def v_dense(s: Setup) -> tuple[float, nn.Module]:
    model = fresh_model(s.seed)
    return _plain_loop(s, model, None), model


def v_dense_fused(s: Setup) -> tuple[float, nn.Module]:
    model = fresh_model(s.seed)
    return _plain_loop(s, model, None, fused=True), model


def v_plain_foreach(s: Setup) -> tuple[float, nn.Module]:
    model = fresh_model(s.seed)
    params = s.mask.check_fits(model)
    masked = list(params.values())
    values = [s.mask[n].to(device=p.device, dtype=p.dtype) for n, p in params.items()]
    with torch.no_grad():
        torch._foreach_mul_(masked, values)

    @torch.no_grad()
    def reapply() -> None:
        torch._foreach_mul_(masked, values)

    return _plain_loop(s, model, reapply), model


def _trainer(s: Setup, mask: Mask | None, **cfg_changes) -> tuple[float, nn.Module]:
    """The Trainer exactly as the library builds it (its own make_optimizer), cfg changed as given."""
    cfg = dataclasses.replace(s.cfg, **cfg_changes) if cfg_changes else s.cfg
    trainer = Trainer(fresh_model(s.seed), s.splits, cfg, mask, device="cpu", seed=s.seed)
    trainer.train(0, s.warmup, resumed=True)  # resumed: no evaluation/callbacks at the start step
    t = _timed(lambda: trainer.train(0, s.iterations, resumed=True))
    return t, trainer.model


def v_trainer(s: Setup) -> tuple[float, nn.Module]:
    return _trainer(s, s.mask)


def v_trainer_nomask(s: Setup) -> tuple[float, nn.Module]:
    return _trainer(s, None)


def v_trainer_unfused(s: Setup) -> tuple[float, nn.Module]:
    return _trainer(s, s.mask, fused_optimizer=False)


def v_trainer_maskgrad(s: Setup) -> tuple[float, nn.Module]:
    return _trainer(s, s.mask, mask_gradients=True)


def v_torch_prune(s: Setup) -> tuple[float, nn.Module]:
    model = fresh_model(s.seed)
    modules = dict(model.named_modules())
    for name in s.mask:
        module_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(modules[module_name], attr, s.mask[name])
    return _plain_loop(s, model, None), model


VARIANTS: dict[str, Callable[[Setup], tuple[float, nn.Module]]] = {
    "dense": v_dense,
    "dense-fused": v_dense_fused,
    "trainer": v_trainer,
    "trainer-nomask": v_trainer_nomask,
    "trainer-unfused": v_trainer_unfused,
    "plain+foreach": v_plain_foreach,
    "torch-prune": v_torch_prune,
    "trainer-maskgrad": v_trainer_maskgrad,
}
DEFAULT_VARIANTS = list(VARIANTS)
MASKED = ("trainer", "trainer-unfused", "plain+foreach", "torch-prune", "trainer-maskgrad")
NEEDS_FUSED = ("dense-fused",)  # plain fused loop: skipped where torch has no fused kernel
DESCRIPTION = {
    "dense": "plain loop, default torch optimizer (reference)",
    "dense-fused": "plain loop, optimizer fused=True",
    "trainer": "ticketlab Trainer + Mask, library defaults",
    "trainer-nomask": "ticketlab Trainer, mask=None, library defaults",
    "trainer-unfused": "ticketlab Trainer + Mask, fused_optimizer=False",
    "plain+foreach": "plain loop (default opt) + _foreach_mul_ mask",
    "torch-prune": "plain loop (default opt) + prune hooks",
    "trainer-maskgrad": "ticketlab Trainer + Mask, mask_gradients=True",
}


# ---------------------------------------------------------------------------------------------
# checks


@torch.no_grad()
def effective_weights(model: nn.Module, mask: Mask, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weights the next forward pass uses (for torch-prune: weight_orig * mask, re-materialised)."""
    model(probe)  # lets prune's pre-hook recompute module.weight from the final weight_orig
    modules = dict(model.named_modules())
    out = {}
    for name in mask:
        module_name, _, attr = name.rpartition(".")
        out[name] = getattr(modules[module_name], attr).detach()
    return out


def check_zero(variant: str, model: nn.Module, s: Setup, probe: torch.Tensor) -> int:
    weights = effective_weights(model, s.mask, probe)
    pruned = 0
    for name, m in s.mask.items():
        w = weights[name]
        nonzero = int(torch.count_nonzero(w[~m]))
        assert nonzero == 0, f"{variant}: {nonzero} pruned weights of {name} are nonzero after the epoch"
        assert torch.count_nonzero(w[m]) > 0, f"{variant}: kept weights of {name} are all zero"
        pruned += int((~m).sum())
    return pruned


def check_same_batches(s: Setup) -> None:
    """The plain loops must see exactly the Trainer's batches."""
    trainer = Trainer(fresh_model(s.seed), s.splits, s.cfg, None, device="cpu", seed=s.seed)
    steps = {0, s.iterations // 2, s.iterations - 1}
    plain = {i: b for i, b in enumerate(plain_batches(s, s.iterations)) if i in steps}
    for step in sorted(steps):
        tx, ty = trainer.batch(step)
        px, py = plain[step]
        assert torch.equal(tx, px) and torch.equal(ty, py), f"batch {step} differs between Trainer and plain loop"


# ---------------------------------------------------------------------------------------------


def breakdown(opt: str, args: argparse.Namespace, splits: DataSplits, mask: Mask) -> None:
    """Per-step cost of each phase of the masked plain loop, timed inside the loop (cache state as
    in training), for the default and the fused optimizer; plus the masking op alone, cache-hot."""
    cfg = train_config(opt, args)
    s = Setup(splits, batch_permutation(len(splits.train), args.seed), mask, cfg, args.seed,
              args.warmup, args.iterations)
    phases = ("batch", "forward+loss", "zero_grad", "backward", "optimizer.step", "mask _foreach_mul_")
    impls = ["default"] + (["fused"] if fused_available(cfg) else [])
    print(f"\n--- per-step breakdown, {opt}, batch {cfg.batch_size}, {args.iterations} it x {args.repeats} "
          f"repeats (microseconds per step, median over repeats) ---")
    print(f"{'phase':<22}" + "".join(f"{i:>14}" for i in impls))
    acc = {i: {ph: [] for ph in phases} for i in impls}
    hot = []
    for _ in range(args.repeats):
        for impl in impls:
            model = fresh_model(s.seed)
            params = mask.check_fits(model)
            masked = list(params.values())
            values = [mask[n].to(dtype=p.dtype) for n, p in params.items()]
            optim = torch_optimizer(list(model.parameters()), cfg, fused=impl == "fused")
            tot = dict.fromkeys(phases, 0.0)
            clock = time.perf_counter
            with torch.no_grad():
                torch._foreach_mul_(masked, values)
            x_all, y_all, b = splits.train.x, splits.train.y, cfg.batch_size
            for i in range(s.warmup + s.iterations):
                if i == s.warmup:
                    tot = dict.fromkeys(phases, 0.0)
                step = i - s.warmup if i >= s.warmup else i
                tb = clock()
                idx = s.perm[step * b:(step + 1) * b]
                x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
                t0 = clock()
                loss = F.cross_entropy(model(x), y)
                t1 = clock()
                optim.zero_grad(set_to_none=True)
                t2 = clock()
                loss.backward()
                t3 = clock()
                optim.step()
                t4 = clock()
                with torch.no_grad():
                    torch._foreach_mul_(masked, values)
                t5 = clock()
                tot["batch"] += t0 - tb
                tot["forward+loss"] += t1 - t0
                tot["zero_grad"] += t2 - t1
                tot["backward"] += t3 - t2
                tot["optimizer.step"] += t4 - t3
                tot["mask _foreach_mul_"] += t5 - t4
            for ph in phases:
                acc[impl][ph].append(tot[ph] / s.iterations * 1e6)
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(s.iterations):
                torch._foreach_mul_(masked, values)
            hot.append((time.perf_counter() - t0) / s.iterations * 1e6)
    for ph in phases:
        print(f"{ph:<22}" + "".join(f"{statistics.median(acc[i][ph]):>14.1f}" for i in impls))
    total = {i: sum(statistics.median(acc[i][ph]) for ph in phases) for i in impls}
    print(f"{'total':<22}" + "".join(f"{total[i]:>14.1f}" for i in impls))
    print(f"{'mask / unmasked step':<22}" + "".join(
        f"{statistics.median(acc[i]['mask _foreach_mul_']) / (total[i] - statistics.median(acc[i]['mask _foreach_mul_'])):>14.1%}"
        for i in impls))
    print(f"mask _foreach_mul_ alone in a tight loop (cache-hot): {statistics.median(hot):.1f} us/step")


def fused_available(cfg: TrainConfig) -> bool:
    try:
        p = nn.Parameter(torch.zeros(2))
        p.grad = torch.ones(2)
        torch_optimizer([p], cfg, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def check_optimizers(cfg: TrainConfig) -> str:
    """The plain loops' optimisers must have the Trainer's hyper-parameters; only the implementation
    (fused or not) may differ. Returns how the Trainer's optimiser is built, for the printout."""
    probe = [nn.Parameter(torch.zeros(2))]
    lib_default = make_optimizer(probe, dataclasses.replace(cfg, fused_optimizer=False))
    lib = make_optimizer(probe, cfg)
    plain = torch_optimizer(probe, cfg, fused=False)
    assert type(plain) is type(lib_default) and plain.defaults == lib_default.defaults, \
        f"plain loop optimiser {plain.defaults} differs from ticketlab's {lib_default.defaults}"
    lib_fused = bool(lib.defaults.get("fused"))
    if lib_fused:
        fused = torch_optimizer(probe, cfg, fused=True)
        assert type(fused) is type(lib) and fused.defaults == lib.defaults, \
            f"dense-fused optimiser {fused.defaults} differs from ticketlab's {lib.defaults}"
    return (f"{type(lib).__name__}(fused={lib_fused})"
            + ("" if lib_fused or not cfg.fused_optimizer else " -- no fused kernel here, library fell back"))


def train_config(opt: str, args: argparse.Namespace) -> TrainConfig:
    common = dict(batch_size=args.batch_size, steps=f"{args.iterations}it",
                  eval_every=f"{10 * (args.iterations + args.warmup) + 1}it")  # never inside the run
    if opt == "adam":
        return TrainConfig(optimizer="adam", lr=args.adam_lr, **common)
    return TrainConfig(optimizer="sgd", lr=args.sgd_lr, momentum=0.9, weight_decay=args.sgd_weight_decay, **common)


def bench_optimizer(opt: str, args: argparse.Namespace, splits: DataSplits, mask: Mask) -> bool:
    cfg = train_config(opt, args)
    s = Setup(splits, batch_permutation(len(splits.train), args.seed), mask, cfg, args.seed,
              args.warmup, args.iterations)
    check_same_batches(s)
    trainer_opt = check_optimizers(cfg)
    probe = splits.train.x[:8]
    names = [v for v in VARIANTS if v in args.variants]
    if any(v in NEEDS_FUSED for v in names) and not fused_available(cfg):
        print(f"NOTE: torch {torch.__version__} has no fused {cfg.optimizer} on the CPU; skipping {NEEDS_FUSED}")
        names = [v for v in names if v not in NEEDS_FUSED]
    times: dict[str, list[float]] = {v: [] for v in names}
    desc = (f"adam lr={cfg.lr}" if opt == "adam"
            else f"sgd lr={cfg.lr} momentum={cfg.momentum} weight_decay={cfg.weight_decay}")
    print(f"\n=== optimizer: {desc}; {args.iterations} iterations x batch {cfg.batch_size} "
          f"(+{args.warmup} warm-up), {args.repeats} interleaved repeats ===", flush=True)
    print(f"ticketlab Trainer (library defaults) builds {trainer_opt}; "
          f"plain loops build torch.optim.{'SGD' if opt == 'sgd' else 'Adam'}(...) directly", flush=True)
    zero_checked: dict[str, int] = {}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always first
        for v in order:
            t, model = VARIANTS[v](s)
            times[v].append(t)
            if v in MASKED:
                zero_checked[v] = check_zero(v, model, s, probe)
            del model
        print(f"  repeat {r + 1}/{args.repeats}: " + "  ".join(f"{v}={times[v][-1]:.3f}s" for v in names),
              flush=True)

    def ratio(a: str, b: str) -> float | None:
        """Median over repeats of time(a) / time(b) within the same repeat."""
        if a not in times or b not in times:
            return None
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    def fmt(x: float | None) -> str:
        return "n/a (variant not run)" if x is None else f"{x:.3f}"

    scale = 1000 / args.iterations  # report seconds per full 1000-iteration epoch
    print(f"\n{'variant':<17} {'what':<48} {'s/epoch (median)':>17} {'ratio to dense':>15} {'ratio min..max':>16}")
    for v in names:
        med = statistics.median(times[v]) * scale
        per = [t / d for t, d in zip(times[v], times["dense"])]
        print(f"{v:<17} {DESCRIPTION[v]:<48} {med:>17.3f} {ratio(v, 'dense'):>15.3f} "
              f"{min(per):>7.3f}..{max(per):<7.3f}")
    if args.iterations != 1000:
        print(f"  (s/epoch extrapolated x{scale:g} from {args.iterations} iterations)")
    for v, n in zero_checked.items():
        print(f"  verified {v}: all {n} pruned weights exactly zero after every timed epoch")

    primary = ratio(PRIMARY, "dense")
    equal = ratio("trainer", "trainer-nomask")  # issue 22: masking at equal optimiser, same target
    passed = (primary is None or primary <= TARGET) and (equal is None or equal <= TARGET)
    print(f"\n[{opt}] ratios (median of per-repeat ratios):")
    verdict = "n/a" if primary is None else ("PASS" if primary <= TARGET else "FAIL")
    print(f"  1. ticketlab masked epoch / plain PyTorch dense epoch: {fmt(primary)}   "
          f"(trainer / dense)   TARGET <= {TARGET:.2f}: {verdict}")
    print(f"  2. masking cost at equal optimizer (fused): trainer / dense-fused = {fmt(ratio('trainer', 'dense-fused'))}")
    print(f"     masking cost at equal optimizer (fused): trainer / trainer-nomask = "
          f"{fmt(equal)}   TARGET <= {TARGET:.2f}: "
          f"{'n/a' if equal is None else ('PASS' if equal <= TARGET else 'FAIL')}")
    print(f"  3. masking cost at equal optimizer (default): plain+foreach / dense = "
          f"{fmt(ratio('plain+foreach', 'dense'))}")
    print(f"     masking cost at equal optimizer (default): trainer-unfused / dense = "
          f"{fmt(ratio('trainer-unfused', 'dense'))}")
    print(f"  4. torch.nn.utils.prune / dense = {fmt(ratio('torch-prune', 'dense'))}")
    print(f"     torch-prune / trainer = {fmt(ratio('torch-prune', 'trainer'))}")
    print(f"     (fused optimizer alone, dense-fused / dense = {fmt(ratio('dense-fused', 'dense'))}; "
          f"Trainer bookkeeping, trainer-nomask / dense-fused = {fmt(ratio('trainer-nomask', 'dense-fused'))}"
          + (f"; gradient masking, trainer-maskgrad / trainer = {fmt(ratio('trainer-maskgrad', 'trainer'))}"
             if "trainer-maskgrad" in times else "") + ")")
    return passed


def warn_if_oversubscribed() -> None:
    """Intra-op threads that outnumber the idle cores make every op wait at OpenMP barriers."""
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return
    threads = torch.get_num_threads()
    print(f"machine: {cores} cores, 1-min load average {load:.2f} before the benchmark")
    if threads > 1 and load + threads > cores + 0.5:
        print(f"WARNING: {threads} torch threads on {cores} cores with load {load:.2f}: other processes hold "
              f"cores, and multi-threaded ops stall at OpenMP barriers (can be 10x slower and very noisy).\n"
              f"         Prefer --threads 1 on a busy machine; ratios are then still comparable.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                   help="MNIST folder (default: ../shared/data/mnist from the repo root); "
                        "synthetic data if missing")
    p.add_argument("--iterations", type=int, default=1000, help="timed iterations (1000 = one epoch)")
    p.add_argument("--warmup", type=int, default=50, help="untimed iterations before each timed epoch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--optimizer", choices=("adam", "sgd", "both"), default="both")
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--density", type=float, default=0.2, help="fraction of each Linear weight kept")
    p.add_argument("--mask", choices=("magnitude", "random"), default="magnitude")
    p.add_argument("--adam-lr", type=float, default=1.2e-3)
    p.add_argument("--sgd-lr", type=float, default=0.01)
    p.add_argument("--sgd-weight-decay", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=DEFAULT_VARIANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--breakdown", action="store_true",
                   help="also time each phase of a masked step (forward, backward, optimizer, mask)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--iterations and --repeats must be >= 1, --warmup >= 0")
    if "dense" not in args.variants:
        args.variants = ["dense", *args.variants]  # ratios need the reference
    if args.threads:
        torch.set_num_threads(args.threads)

    splits, source = load_data(args.data_root)
    need = (max(args.iterations, args.warmup)) * args.batch_size
    if need > len(splits.train):
        p.error(f"{args.iterations} iterations x batch {args.batch_size} exceed one epoch of "
                f"{len(splits.train)} samples")
    # Empty test split: the Trainer's one unavoidable evaluation (at the end of train()) costs ~nothing.
    empty = ArrayData(splits.test.x[:0], splits.test.y[:0])
    splits = DataSplits(splits.name, splits.train, empty, splits.num_classes, splits.input_shape)
    mask = make_mask(args.seed, args.density, args.mask)

    print(f"ticketlab {getattr(ticketlab, '__version__', '?')}, torch {torch.__version__}, "
          f"python {platform.python_version()}, {platform.machine()}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"data: {source}; model: lenet_300_100; mask: {args.mask}, layer-wise, "
          f"density {mask.density:.4f} ({mask.num_kept}/{mask.num_total} weights kept)")
    warn_if_oversubscribed()
    optimizers = ("adam", "sgd") if args.optimizer == "both" else (args.optimizer,)
    results = {opt: bench_optimizer(opt, args, splits, mask) for opt in optimizers}
    if args.breakdown:
        for opt in optimizers:
            breakdown(opt, args, splits, mask)
    failed = [opt for opt, ok in results.items() if not ok]
    print(f"\nTARGETS (ticketlab masked epoch / plain PyTorch dense epoch <= {TARGET:.2f}, "
          f"trainer / trainer-nomask <= {TARGET:.2f}): "
          + ", ".join(f"{opt} {'PASS' if ok else 'FAIL'}" for opt, ok in results.items())
          + f" -> exit status {1 if failed else 0}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
