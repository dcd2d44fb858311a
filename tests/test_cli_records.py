"""The command line generated from the experiment records: the same command line builds the same
config as before (so run hashes, and every stored run, stay where they were), every option has help
text and shows its default, and the records are what the parser is built from."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import re
from dataclasses import dataclass, field

import pytest

from ticketlab import __version__, flags
from ticketlab.cli import build_parser, config_from_args, main
from ticketlab.config import ConfigError, DataConfig, ModelConfig, TrainConfig, config_hash, option, to_dict
from ticketlab.experiments import registry
from ticketlab.experiments.registry import EXPERIMENTS

SMALL = ["--dataset", "synthetic_mlp", "--data-option", "n_train=256", "--data-option", "n_test=128",
         "--model", "mlp", "--model-option", "hidden=[16]", "--steps", "2ep", "--batch-size", "32"]
RUN = ["--runs-dir", "elsewhere", "--device", "cpu", "--threads", "1", "--no-progress"]
EB_README = ["--dataset", "mnist", "--data-root", "path/to/mnist", "--model", "vgg11", "--model-option", "width=0.125",
             "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--weight-decay", "1e-4", "--batch-size", "128",
             "--steps", "15ep", "--schedule", "multistep", "--milestones", "8ep", "12ep", "--prune-ratio", "0.5"]
LENET = ["--preset", "lenet_mnist", "--data-root", "path/to/mnist"]
SPARSE_README = [*LENET, "--steps", "10ep"]

# Representative command lines per command, the README's among them ("..." spelled out).
CASES = [
    # imp: the README's commands first
    ["imp"],
    ["imp", *LENET, "--levels", "15"],
    ["imp", "--preset", "resnet20_cifar10", "--data-root", "path/to/cifar", "--reset", "rewind",
     "--rewind-step", "2000it"],
    ["imp", "--dataset", "digits", "--model", "mlp", "--model-option", "hidden=[300,100]", "--steps", "30ep",
     "--reset", "lr_rewind", "--rewind-step", "10ep", "--scope", "layerwise", "--rate", "0.3", "--levels", "8"],
    ["imp", "--preset", "lenet_mnist", "--data-root", "../shared/data/mnist", "--steps", "20000it", "--levels", "15",
     "--baselines", "reinit"],
    ["imp", *SMALL, "--levels", "2", *RUN],
    ["imp", "--preset", "lenet_mnist", "--no-prune-output"],
    ["imp", "--no-prune-first", "--output-rate", "0.05", "--scope", "layerwise"],
    ["imp", "--baselines"],
    ["imp", "--baselines", "random", "reinit", "--reset", "finetune", "--rewind-step", "1ep"],
    ["imp", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4",
     "--batch-size", "128", "--steps", "2ep100it", "--schedule", "multistep", "--milestones", "1ep", "2ep",
     "--gamma", "0.2", "--warmup", "100it", "--eval-every", "500it", "--mask-gradients", "--no-fused-optimizer",
     "--seed", "3", "--val-size", "100"],
    ["imp", "--prune-param", "w1", "--prune-param", "emb", "--keep-dense", "fc", "--prune-param", "w1"],
    ["imp", "--preset", "vgg16_cifar10", "--lr", "0.05", "--model-option", "width=0.5",
     "--data-option", "augment=true"],
    ["imp", "--preset", "conv2_cifar10", "--schedule", "cosine", "--steps", "3ep", "--eval-every", "1ep"],
    ["imp", "--preset", "resnet20_cifar10", "--reset", "init", "--rewind-step", "0it", "--milestones", "10ep"],
    # demo: imp with the DEMO base
    ["demo"],
    ["demo", "--levels", "3", "--rate", "0.5", "--no-progress"],
    ["demo", "--model-option", "hidden=[64]", "--model-option", "depth=2", "--steps", "5ep", "--seed", "1"],
    ["demo", "--preset", "lenet_mnist"],
    ["demo", "--reset", "rewind", "--rewind-step", "1ep", "--baselines", "reinit", "--threads", "2"],
    # prune
    ["prune", "--method", "snip", "--density", "0.1"],
    ["prune", *LENET, "--method", "snip", "--sparsity", "0.98"],
    ["prune", "--preset", "vgg16_cifar10", "--data-root", "path/to/cifar", "--method", "synflow", "--density", "0.01",
     "--distribution", "erk"],
    ["prune", *LENET, "--method", "snip", "--sparsity", "0.98", "--sanity", "shuffle"],
    ["prune", *SMALL, "--method", "magnitude", "--sparsity", "0.9", *RUN],
    ["prune", "--method", "synflow", "--sparsity", "0.99"],
    ["prune", "--method", "grasp", "--density", "0.05", "--grasp-temperature", "100", "--score-batches", "2",
     "--score-batch-size", "64", "--rounds", "3", "--prune-schedule", "linear", "--no-prune-first",
     "--no-prune-output", "--prune-param", "w1", "--keep-dense", "fc"],
    ["prune", "--method", "random", "--density", "0.3", "--distribution", "smart", "--sanity", "reinit", "--seed", "2"],
    ["prune", "--preset", "resnet20_cifar10", "--method", "magnitude", "--sparsity", "0.8", "--sanity", "invert"],
    ["prune", "--method", "snip", "--density", "1"],
    # sparse
    ["sparse", *SPARSE_README, "--method", "rigl", "--sparsity", "0.9"],
    ["sparse", *SPARSE_README, "--method", "set", "--sparsity", "0.9"],
    ["sparse", *SPARSE_README, "--method", "static", "--sparsity", "0.9"],
    ["sparse", *SPARSE_README, "--method", "gmp", "--sparsity", "0.9", "--gmp-start", "1ep", "--gmp-every", "100it"],
    ["sparse", *SPARSE_README, "--method", "dense"],
    ["sparse", "--method", "dense"],
    ["sparse", "--method", "rigl", "--density", "0.2", "--delta-t", "50", "--t-end", "0.5", "--alpha", "0.4",
     "--distribution", "uniform"],
    ["sparse", "--method", "gmp", "--density", "0.05", "--gmp-end", "5ep", "--gmp-initial-sparsity", "0.5",
     "--distribution", "global", "--no-prune-first", "--no-prune-output"],
    ["sparse", *SMALL, "--method", "static", "--density", "0.5", "--optimizer", "sgd", "--lr", "1e30", *RUN],
    ["sparse", "--method", "set", "--sparsity", "0.8", "--prune-param", "w1", "--keep-dense", "fc", "--seed", "5"],
    # early-bird
    ["early-bird"],
    ["early-bird", *EB_README],
    ["early-bird", *EB_README, "--search-lr", "0.1", "--search-precision", "bf16"],
    ["early-bird", *EB_README, "--kind", "unstructured"],
    ["early-bird", "--kind", "unstructured", "--prune-ratio", "0.8", "--epsilon", "0.05", "--window", "3",
     "--slimming", "0", "--retrain-from", "reinit", "--prune-param", "w1", "--keep-dense", "fc"],
    ["early-bird", "--dataset", "synthetic_images", "--data-option", "n_train=256", "--data-option", "n_test=64",
     "--data-option", "shape=[3,16,16]", "--model", "vgg11", "--model-option", "width=0.125", "--optimizer", "sgd",
     "--lr", "0.05", "--momentum", "0.9", "--batch-size", "64", "--eval-every", "1ep", "--window", "2",
     "--epsilon", "0.5", "--steps", "8ep", *RUN],
    ["early-bird", "--preset", "resnet20_cifar10"],
]

# (config_hash, digest of the whole config incl. unhashed fields such as data.root), computed with
# the hand-written cli.py before the records (commit 363b15a). README's runs: 18ffe00a, c42bd464.
EXPECTED = [
    ("fe41c07a8f53", "7f72adc3e951"),  # imp
    ("63f0f752f065", "87658ed75d2a"),  # imp --preset lenet_mnist --data-root path/to/mnist --levels 15
    ("e08426fb5c77", "46c3673a80a3"),  # imp --preset resnet20_cifar10 --data-root path/to/cifar --reset rewind --rewi
    ("0df75796aae2", "cc1eafb427b3"),  # imp --dataset digits --model mlp --model-option hidden=[300,100] --steps 30ep
    ("18ffe00a8757", "c3c4973871f0"),  # imp --preset lenet_mnist --data-root ../shared/data/mnist --steps 20000it --l
    ("c28735a1c1ec", "848dc16071f7"),  # imp --dataset synthetic_mlp --data-option n_train=256 --data-option n_test=12
    ("894ae71b7cd2", "313893a926d5"),  # imp --preset lenet_mnist --no-prune-output
    ("ee2ee5634168", "0448febfad7d"),  # imp --no-prune-first --output-rate 0.05 --scope layerwise
    ("145b6549d94c", "70dd15c11cfe"),  # imp --baselines
    ("645558bff15a", "ef43cda4c223"),  # imp --baselines random reinit --reset finetune --rewind-step 1ep
    ("f9dc32ed056d", "a2b68032efe7"),  # imp --optimizer sgd --lr 0.1 --momentum 0.9 --nesterov --weight-decay 5e-4 --
    ("7d75beb5c224", "97e97daa090a"),  # imp --prune-param w1 --prune-param emb --keep-dense fc --prune-param w1
    ("f50d9f5962d5", "d9475201d771"),  # imp --preset vgg16_cifar10 --lr 0.05 --model-option width=0.5 --data-option a
    ("f17889d91573", "f30e0b1e7990"),  # imp --preset conv2_cifar10 --schedule cosine --steps 3ep --eval-every 1ep
    ("456b0288a766", "8bdda1930616"),  # imp --preset resnet20_cifar10 --reset init --rewind-step 0it --milestones 10e
    ("c42bd46494ab", "42b941c35eda"),  # demo
    ("3fd97efe8170", "3099b1a69158"),  # demo --levels 3 --rate 0.5 --no-progress
    ("64be3b77a2c3", "455513b92b98"),  # demo --model-option hidden=[64] --model-option depth=2 --steps 5ep --seed 1
    ("3ef030de1660", "4d88e1636356"),  # demo --preset lenet_mnist
    ("7b49698f8b66", "0d64bac6b567"),  # demo --reset rewind --rewind-step 1ep --baselines reinit --threads 2
    ("2a9181d8b83b", "4f1e3103b23a"),  # prune --method snip --density 0.1
    ("e69bfe01bbb4", "cb7664c4c5f2"),  # prune --preset lenet_mnist --data-root path/to/mnist --method snip --sparsity
    ("98b2bd3799f2", "b122024833c2"),  # prune --preset vgg16_cifar10 --data-root path/to/cifar --method synflow --den
    ("e26728a06e5f", "49590cd15eea"),  # prune --preset lenet_mnist --data-root path/to/mnist --method snip --sparsity
    ("9e09567c7c30", "5c4fe34f8f25"),  # prune --dataset synthetic_mlp --data-option n_train=256 --data-option n_test=
    ("4dc07ca82440", "532a52b258a2"),  # prune --method synflow --sparsity 0.99
    ("20237b3aef8c", "ddbed984ee07"),  # prune --method grasp --density 0.05 --grasp-temperature 100 --score-batches 2
    ("532c1ac99aef", "f5b4e4992f92"),  # prune --method random --density 0.3 --distribution smart --sanity reinit --se
    ("59a816a5c5f2", "b322c5397d43"),  # prune --preset resnet20_cifar10 --method magnitude --sparsity 0.8 --sanity in
    ("0ce87efd1e9c", "109e94dc45ca"),  # prune --method snip --density 1
    ("039e27810b72", "4c2b17d038ac"),  # sparse --preset lenet_mnist --data-root path/to/mnist --steps 10ep --method r
    ("e0935d7800ad", "94ca778c5666"),  # sparse --preset lenet_mnist --data-root path/to/mnist --steps 10ep --method s
    ("97cc97cd35b3", "9ac8fb09c7ba"),  # sparse --preset lenet_mnist --data-root path/to/mnist --steps 10ep --method s
    ("571dcae238e9", "b97b9ad2ea8c"),  # sparse --preset lenet_mnist --data-root path/to/mnist --steps 10ep --method g
    ("f8f27966b645", "c517c5445430"),  # sparse --preset lenet_mnist --data-root path/to/mnist --steps 10ep --method d
    ("66ea7c555844", "be10579934f4"),  # sparse --method dense
    ("f43d80c50670", "43e3ef262fd1"),  # sparse --method rigl --density 0.2 --delta-t 50 --t-end 0.5 --alpha 0.4 --dis
    ("d9acaa1e3c7b", "5531c7a720e6"),  # sparse --method gmp --density 0.05 --gmp-end 5ep --gmp-initial-sparsity 0.5 -
    ("9ce86edfe419", "3cd4dbc4fd0a"),  # sparse --dataset synthetic_mlp --data-option n_train=256 --data-option n_test
    ("d3a2a2a343e1", "593a5c1a7760"),  # sparse --method set --sparsity 0.8 --prune-param w1 --keep-dense fc --seed 5
    ("1a89cce9e2ce", "d6702023f6c9"),  # early-bird
    ("3837418628a8", "9a37927ef9b8"),  # early-bird --dataset mnist --data-root path/to/mnist --model vgg11 --model-op
    ("d687263b01da", "21570c6137ce"),  # early-bird --dataset mnist --data-root path/to/mnist --model vgg11 --model-op
    ("9bbef1577dba", "8b0ae1f6a58f"),  # early-bird --dataset mnist --data-root path/to/mnist --model vgg11 --model-op
    ("0b08845fbfcd", "446b6cabd228"),  # early-bird --kind unstructured --prune-ratio 0.8 --epsilon 0.05 --window 3 --
    ("843c874ebd13", "8af51f25761e"),  # early-bird --dataset synthetic_images --data-option n_train=256 --data-option
    ("751300ea058e", "67c4e158383b"),  # early-bird --preset resnet20_cifar10
]

# command lines the CLI refuses, with the start of the reason
REFUSED = [
    # accepted with the rate silently dropped until issue 21; an explicit rate with a dense output layer is refused
    (["imp", "--preset", "lenet_mnist", "--no-prune-output", "--output-rate", "0.3"],
     "--output-rate prunes the output layer, which --no-prune-output keeps dense"),
    (["prune", "--method", "snip"], "usage"),  # --density or --sparsity is required
    (["prune", "--method", "snip", "--density", "0.1", "--sparsity", "0.9"], "usage"),
    (["sparse", "--method", "rigl", "--density", "0.1", "--sparsity", "0.9"], "usage"),
    (["sparse", "--density", "0.1"], "usage"),  # --method is required
    (["imp", "--reset", "nope"], "usage"),
    (["prune", "--method", "snip", "--sparsity", "1.0"], "sparsity (fraction removed) must be in [0, 1)"),
    (["sparse", "--method", "rigl", "--sparsity", "-0.1"], "sparsity (fraction removed) must be in [0, 1)"),
    (["sparse", "--method", "static"], "--method static needs --density or --sparsity"),
    (["sparse", "--method", "rigl", "--density", "0.2", "--distribution", "global"], "does not apply to rigl"),
    (["imp", "--rate", "1.0"], "prune rate must be in [0, 1)"),
    (["imp", "--rewind-step", "1ep"], "rewind_step is only used"),
    (["early-bird", "--kind", "channel", "--prune-param", "w1"], "include / exclude"),
    # silently ignored until issue 21: a density with dense training, a step count without a unit
    (["sparse", "--method", "dense", "--sparsity", "0.9"], "--method dense trains every weight"),
    (["imp", "--steps", "10"], "step '10' has no unit: write '10it' for 10 iterations or '10ep' for 10 epochs"),
]


def _digest(config) -> str:
    text = json.dumps([type(config).__name__, to_dict(config)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _build(argv):
    return config_from_args(build_parser().parse_args(argv))


def test_pinned_lists_line_up():
    assert len(CASES) == len(EXPECTED)


@pytest.mark.parametrize("argv, expected", list(zip(CASES, EXPECTED)), ids=[" ".join(c)[:60] for c in CASES])
def test_same_command_line_same_config_as_before_the_records(argv, expected):
    config = _build(argv)
    assert (config_hash(config), _digest(config)) == expected


@pytest.mark.parametrize("argv, message", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_refused_command_lines_are_still_refused(argv, message):
    err = io.StringIO()
    if message == "usage":
        with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(err):
            _build(argv)
        assert exc.value.code == 2 and "usage:" in err.getvalue()
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            _build(argv)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))  # every command
def test_every_option_has_help_and_shows_its_default(command):
    p = _subparsers(build_parser())[command]
    text = " ".join(p.format_help().split())
    for action in p._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        for flag in action.option_strings:
            assert flag in text
        switch = action.nargs == 0
        mutually_exclusive = action.dest == "sparsity"  # the other spelling of --density
        if not (switch or mutually_exclusive):
            shown = _help_of(p, action.option_strings[0])
            assert "(default: " in shown or "(required" in shown, f"{command} {action.option_strings[0]}: {shown}"


def _help_of(parser: argparse.ArgumentParser, flag: str) -> str:
    action = next(a for a in parser._actions if flag in a.option_strings)
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_help_shows_each_command_its_own_defaults():
    sub = _subparsers(build_parser())
    demo, imp = sub["demo"], sub["imp"]
    for flag, own, imps in [("--dataset", "digits", "mnist"), ("--levels", "9", "10"), ("--rate", "0.4", "0.2"),
                            ("--model-option", "hidden=[300,100]", "none"), ("--lr", "0.001", "0.0012"),
                            ("--threads", "1", "PyTorch's choice")]:
        assert f"(default: {own})" in _help_of(demo, flag), flag
        assert f"(default: {imps})" in _help_of(imp, flag), flag
    for flag, default in [("--delta-t", "100"), ("--t-end", "0.75"), ("--alpha", "0.3")]:
        assert f"(default: {default})" in _help_of(sub["sparse"], flag)
    for flag, default in [("--epsilon", "0.1"), ("--window", "5"), ("--search-precision", "fp32")]:
        assert f"(default: {default})" in _help_of(sub["early-bird"], flag)
    for command, flag in [("imp", "--data-option"), ("imp", "--runs-dir"), ("prune", "--grasp-temperature")]:
        assert _help_of(sub[command], flag)


def test_top_level_help_is_plain_text_and_version(capsys):
    text = build_parser().format_help()
    assert "``" not in text and "ticketlab" in text
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ticketlab {__version__}"


def test_subcommands_come_from_the_records():
    sub = _subparsers(build_parser())
    assert set(EXPERIMENTS) <= set(sub)
    for name, e in EXPERIMENTS.items():
        assert sub[name].get_default("experiment") is e
        assert callable(e.run) and callable(e.report) and hasattr(e.config_cls, "experiment")


@pytest.mark.parametrize("bad", ["status", "=complete"])
def test_ls_filter_without_equals_is_one_clear_line(tmp_path, capsys, bad):
    assert main(["ls", bad, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ticketlab: error: ls filters are KEY=VALUE or KEY>NUMBER") and err.count("\n") == 1
    assert "dictionary update sequence" not in err


def test_ls_filter_on_a_key_no_run_has_is_an_error_not_an_empty_list(tmp_path, capsys):
    from ticketlab.config import DataConfig, IMPConfig, ModelConfig, TrainConfig
    from ticketlab.experiments.imp import run_imp
    from ticketlab.store import Store

    cfg = IMPConfig(data=DataConfig(name="synthetic_mlp", val_size=16, options={"n_train": 64, "n_test": 16, "dim": 4}),
                    model=ModelConfig(name="mlp", options={"hidden": [8]}),
                    train=TrainConfig(batch_size=32, steps="1ep", eval_every="1ep"), levels=0, baselines=())
    run_imp(cfg, Store(tmp_path), progress=False, log=lambda text: None)
    assert main(["ls", "datset=synthetic_mlp", "--runs-dir", str(tmp_path)]) == 2  # typo: one clear line
    err = capsys.readouterr().err
    assert "no run in this store has 'datset'" in err and "dataset" in err and err.count("\n") == 1
    for good in (["dataset=synthetic_mlp"], ["train.lr=0.0012"], ["lr=0.0012"], ["hidden=[8]"]):
        assert main(["ls", *good, "--runs-dir", str(tmp_path)]) == 0, good
        assert cfg.data.name in capsys.readouterr().out, good
    assert main(["ls", "lr=0.5", "--runs-dir", str(tmp_path)]) == 0  # a known key with no match: empty, no error
    assert "no runs under" in capsys.readouterr().out
    # comparisons over config and summary values (issue 21: "key>value")
    acc = Store(tmp_path).list()[0]["summary"]["final_test_accuracy"]
    for expr, listed in ((f"final_test_accuracy>={acc}", True), (f"final_test_accuracy>{acc}", False),
                         ("lr<0.01", True), ("lr>0.01", False), ("train.batch_size<=32", True)):
        assert main(["ls", expr, "--runs-dir", str(tmp_path)]) == 0, expr
        assert (cfg.data.name in capsys.readouterr().out) == listed, expr
    assert main(["ls", "lr>abc", "--runs-dir", str(tmp_path)]) == 2
    assert "compares numbers" in capsys.readouterr().err


def test_a_new_procedure_is_a_config_and_one_record(monkeypatch, tmp_path, capsys):
    """No line of cli.py: the record's config fields become the command's flags, help and defaults."""
    @dataclass(frozen=True)
    class ToyConfig:  # its annotations name module-level imports, as in a procedure's own file
        data: DataConfig = field(default_factory=DataConfig)
        model: ModelConfig = field(default_factory=ModelConfig)
        train: TrainConfig = field(default_factory=TrainConfig)
        flips: int = option(3, "sign flips per layer")
        keep_signs: bool = option(True, "flip magnitudes only")
        layers: tuple[str, ...] = option((), "layers to flip", metavar="NAME")
        seed: int = option(0, "random seed", group="training")

        experiment = "toy"

    ran = []
    toy = registry.Experiment("toy", "flip some signs", ToyConfig, lambda config, store, **kw: ran.append(config),
                              lambda runs, plot: ("### toy", []), "toy options", base={"flips": 5})
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", toy)
    parser = build_parser()
    help_text = _help_of(_subparsers(parser)["toy"], "--flips")
    assert help_text == "sign flips per layer (default: 5)"  # the record's base, not the field's 3
    config = config_from_args(parser.parse_args(["toy", "--no-keep-signs", "--layers", "fc1", "fc2", "--lr", "0.1",
                                                 "--preset", "lenet_mnist"]))
    assert config == ToyConfig(data=DataConfig(name="mnist", val_size=5000), model=ModelConfig(),
                               train=TrainConfig(lr=0.1, steps="50000it", eval_every="1000it"), flips=5,
                               keep_signs=False, layers=("fc1", "fc2"))


def test_a_field_without_help_text_cannot_become_a_flag():
    @dataclass(frozen=True)
    class Bare:
        steps: int = 3

    with pytest.raises(TypeError, match="no help text"):
        flags.options(Bare, "bare")


def test_output_rate_with_no_prune_output_is_refused_but_a_presets_rate_is_dropped(capsys):
    from ticketlab.cli import config_from_args

    assert main(["imp", "--dataset", "digits", "--no-prune-output", "--output-rate", "0.1"]) == 2
    assert "--output-rate prunes the output layer, which --no-prune-output keeps dense" in capsys.readouterr().err
    args = build_parser().parse_args(["imp", "--preset", "lenet_mnist", "--no-prune-output"])
    cfg = config_from_args(args)  # the preset's output rate (0.1) goes with the output layer it prunes
    assert cfg.prune.include_output is False and cfg.prune.output_rate is None


def test_early_birds_fraction_removed_is_sparsity_and_the_old_flag_still_works(capsys):
    """Issue 21, one vocabulary: sparsity = fraction removed everywhere; --prune-ratio is the old name."""
    new = _build(["early-bird", "--sparsity", "0.8"])
    assert capsys.readouterr().err == ""
    old = _build(["early-bird", "--prune-ratio", "0.8"])
    assert "--prune-ratio is deprecated; use --sparsity" in capsys.readouterr().err
    assert new == old and new.prune_ratio == 0.8
