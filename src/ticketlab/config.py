"""Experiment descriptions: small frozen dataclasses, validated on creation, hashed to name runs.

As in OpenLTH, the hash of the description names the run's folder, so the same command finds the
same results and reruns continue instead of starting over. Fields that do not change results
(where the data lives, which device runs it, progress display) are left out of the hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .steps import StepError, parse_step

CONFIG_VERSION = 2
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "multistep", "cosine", "linear")


def reset_modes() -> tuple[str, ...]:
    """The registered IMP reset actions (``experiments/resets.py``), in registration order."""
    from .experiments.resets import RESETS

    return tuple(RESETS)


def _reset_rescalable(name: str) -> bool:
    """Whether the registered reset ``name`` honours ``IMPConfig.reset_rescale``."""
    from .experiments.resets import RESETS

    return RESETS[name].rescalable


def criterion_modes() -> tuple[str, ...]:
    """The registered mask criteria (``pruning/criteria.py``), in registration order."""
    from .pruning.criteria import criterion_names

    return criterion_names()


BASELINES = ("reinit", "random")
SCOPES = ("global", "layerwise")


class ConfigError(ValueError):
    """An experiment option that is out of range or unknown."""


def _check_step(what: str, value: str) -> None:
    try:
        parse_step(value)
    except StepError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _names(what: str, value: Any) -> tuple[str, ...]:
    """``include`` / ``exclude``: parameter or module names, as a sorted tuple without repeats.

    A list (from JSON or the CLI) becomes a tuple, so the config stays hashable and compares equal
    however it was written; a single string is one name.
    """
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise ConfigError(f"{what} must be a list of parameter or module names, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"{what} must hold non-empty parameter or module names (strings), got {bad!r}")
    return tuple(sorted(set(value)))


def option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help as metadata (read by ``ticketlab.flags``).

    ``cli`` may name the ``flag`` (default ``--field-name``), the ``dest`` (the key in presets),
    ``choices`` (a tuple, or a function returning one), ``shown_default`` (text for a default that
    is not a plain value), ``required``, ``group``, ``nargs``, ``action`` ("append"), ``metavar``,
    ``sparsity`` (a density that also takes ``--sparsity`` = 1 - density), ``deprecated`` (earlier
    spellings of the flag, still accepted with a deprecation message), or ``cli=False``.
    Metadata never enters the hash.
    """
    return field(default=default, metadata={"help": help, **cli})


_INCLUDE_HELP = ("also prune this parameter, or the >=2-D weights under this module, e.g. a raw nn.Parameter used "
                 "through F.linear or an embedding (by default only Linear/Conv weights are pruned); repeatable")
_EXCLUDE_HELP = "never prune this parameter, or anything under this module (wins over --prune-param); repeatable"


def _names_field(help: str, flag: str) -> Any:
    """``include`` / ``exclude``: added after runs existed, so at their default () they leave the
    hash (and every stored run) as it was."""
    return field(default=(), metadata={"omit_default": True, "help": help, "flag": flag, "action": "append",
                                       "metavar": "NAME"})


def _include_field(note: str = "") -> Any:
    return _names_field(_INCLUDE_HELP + note, "--prune-param")


def _exclude_field(note: str = "") -> Any:
    return _names_field(_EXCLUDE_HELP + note, "--keep-dense")


def _include_first() -> Any:
    return option(True, "keep the first layer dense", flag="--no-prune-first")


def _include_output() -> Any:
    return option(True, "keep the output layer dense", flag="--no-prune-output")


def _seed() -> Any:
    return option(0, "random seed (init, data order, masks)", group="training")


def _check_names(config: Any) -> None:
    object.__setattr__(config, "include", _names("include", config.include))
    object.__setattr__(config, "exclude", _names("exclude", config.exclude))


def _prunable_options(config: Any) -> dict[str, Any]:
    """Keyword arguments for ``Mask.dense`` / ``prunable_parameters``."""
    return dict(include_first=config.include_first, include_output=config.include_output,
                include=config.include, exclude=config.exclude)


# --- per-method options -------------------------------------------------------------------------
# A method declares its own frozen options dataclass (GraspOptions next to the grasp score,
# DropGrowOptions / GMPOptions next to DropGrow / GradualMagnitude), validated by its own
# __post_init__ and registered under the method's name. An experiment config holds the options of
# its method in one ``options`` field (see ``options_field``), looked up by the method's name.
#
# Hash and config.json compatibility: runs were stored when these options were flat fields of the
# experiment config (``grasp_temperature``, ``delta_t``, ``gmp_start``, ...), every one of them in the
# hash payload and in config.json whatever the method. ``to_dict`` therefore writes the options field
# as those flat legacy keys (a field's ``dest``, else its name), in their old order, taking the
# defaults for the options classes of methods not in use. So every config hashes as before, and
# config.json keeps its flat shape (a run stored by an earlier version is the same run).


def options_field(registry: Any, help: str, method: str = "method") -> Any:
    """The ``options`` field of an experiment config: the options dataclass of its ``method``.

    ``registry`` returns ``{method name: options class}`` (methods without options are absent).
    None (the default) means the method's defaults; a dict is read as that class's keywords.
    The options' own fields become the command-line flags (``ticketlab.flags``), each one refused
    with another method.
    """
    return field(default=None, metadata={"options": registry, "options_of": method, "help": help})


def option_classes(registry: Any) -> list[tuple[type, tuple[str, ...]]]:
    """Each distinct options class of ``registry()`` with the methods using it, in registration order."""
    out: dict[type, list[str]] = {}
    for name, cls in registry().items():
        out.setdefault(cls, []).append(name)
    return [(cls, tuple(names)) for cls, names in out.items()]


def flat_key(f: dataclasses.Field) -> str:
    """The key an options field has in the flat legacy layout (hash, config.json) and on the CLI."""
    return f.metadata.get("dest", f.name)


def flat_options(config: Any, f: dataclasses.Field) -> dict[str, Any]:
    """The options field ``f`` of ``config`` as the flat legacy keys (defaults for other methods;
    every key at its default for ``config`` None)."""
    value = getattr(config, f.name) if config is not None else None
    out: dict[str, Any] = {}
    for cls, _ in option_classes(f.metadata["options"]):
        inst = value if type(value) is cls else cls()
        for g in dataclasses.fields(cls):
            v = getattr(inst, g.name)
            out[flat_key(g)] = list(v) if isinstance(v, tuple) else v
    return out


def _methods_text(methods: tuple[str, ...]) -> str:
    return "/".join(methods)


def _check_options(config: Any) -> None:
    """Resolve ``config.options`` to an instance of its method's options class (or None)."""
    f = next(f for f in dataclasses.fields(config) if "options" in f.metadata)
    registry = f.metadata["options"]()
    method = getattr(config, f.metadata["options_of"])
    cls = registry.get(method)
    value = getattr(config, f.name)
    if isinstance(value, dict):
        if cls is None:
            raise ConfigError(f"method {method!r} takes no options, got {value!r}")
        try:
            value = cls(**value)
        except TypeError as exc:
            raise ConfigError(f"options of {method}: {exc}") from None
    if value is None:
        value = cls() if cls is not None else None
    elif type(value) is not cls:
        users = tuple(m for m, c in registry.items() if c is type(value))
        if not users:
            raise ConfigError(f"options {value!r} belong to no method; {method} takes "
                              f"{cls.__name__ if cls else 'no options'}")
        raise ConfigError(f"{type(value).__name__} applies to {_methods_text(users)}, not {method}"
                          + (f"; use {cls.__name__}" if cls is not None else f" ({method} takes no options)"))
    object.__setattr__(config, f.name, value)


def _legacy_keywords(cls: type) -> type:
    """Deprecation path: the flat keywords of the options (``delta_t=50``) still build the config.

    ``SparseTrainConfig(method="rigl", delta_t=50)`` is ``SparseTrainConfig(method="rigl",
    options=DropGrowOptions(delta_t=50))`` (with a DeprecationWarning), so it hashes as it always did.
    A flat keyword of another method's options is a ConfigError naming the new spelling: it used to be
    stored (and hashed) without effect, which no config can describe any more.
    """
    import functools
    import warnings

    init = cls.__init__
    f = next(f for f in dataclasses.fields(cls) if "options" in f.metadata)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        classes = option_classes(f.metadata["options"])
        legacy = {flat_key(g): (c, methods, g.name) for c, methods in classes for g in dataclasses.fields(c)}
        flat = {k: kwargs.pop(k) for k in list(kwargs) if k in legacy}
        if flat:
            method_field = f.metadata["options_of"]
            default = next(g.default for g in dataclasses.fields(cls) if g.name == method_field)
            method = kwargs.get(method_field, default)
            own = f.metadata["options"]().get(method)
            for k, (c, methods, name) in legacy.items():
                if k in flat and c is not own:
                    raise ConfigError(f"{k} applies to {_methods_text(methods)}, not {method}")
            if kwargs.get(f.name) is not None:
                raise ConfigError(f"give either options= or the flat keywords {sorted(flat)}, not both")
            spelled = ", ".join(f"{legacy[k][2]}={v!r}" for k, v in flat.items())
            warnings.warn(f"{cls.__name__}({', '.join(f'{k}=' for k in flat)}...) is deprecated; write "
                          f"{cls.__name__}(..., {f.name}={own.__name__}({spelled}))", DeprecationWarning,
                          stacklevel=2)
            kwargs[f.name] = own(**{legacy[k][2]: v for k, v in flat.items()})
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def pai_options() -> dict[str, type]:
    """The options classes of the registered scores (``register_score(name, options=...)``)."""
    from .pruning.scores import SCORE_OPTIONS

    return dict(SCORE_OPTIONS)


def sparse_options() -> dict[str, type]:
    """The options classes of the sparse-training methods (``pruning/dynamic.py``)."""
    from .pruning.dynamic import SPARSE_OPTIONS

    return dict(SPARSE_OPTIONS)


@dataclass(frozen=True)
class DataConfig:
    """Which data set, and how much of its training set is held out for validation."""

    name: str = option("mnist", "registered data set: mnist, fashion_mnist, cifar10, cifar100, digits, moons, "
                                "circles, synthetic_mlp, synthetic_images, synthetic_tokens, or one you registered",
                       flag="--dataset", dest="dataset")
    root: str | None = field(default=None, metadata={
        "hash": False, "help": "folder holding the data set's files (mnist, fashion_mnist, cifar10, cifar100)",
        "flag": "--data-root", "dest": "data_root",
        "shown_default": "none; digits and the synthetic sets need no files"})
    val_size: int = option(0, "training samples held out for validation / early stopping")
    options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "a data set option, e.g. n_train=256 or shape=[3,16,16] (values are JSON); repeatable",
        "flag": "--data-option", "dest": "data_options"})

    cli_group = "data and model"

    def __post_init__(self) -> None:
        if self.val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {self.val_size}")


@dataclass(frozen=True)
class ModelConfig:
    """A registered model name and its options (e.g. ``{"hidden": [300, 100]}``)."""

    name: str = option("lenet_300_100", "registered model: lenet_300_100, mlp, conv2, conv4, conv6, vgg11, vgg16, "
                                        "vgg19, resnet20, resnet56, or one you registered",
                       flag="--model", dest="model")
    options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "a model option, e.g. hidden=[300,100] or width=0.25 (values are JSON); repeatable",
        "flag": "--model-option", "dest": "model_options"})

    cli_group = "data and model"


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, LR schedule and length of one training run. Steps are step strings."""

    optimizer: Literal["sgd", "adam", "adamw"] = option("adam", "optimiser")
    lr: float = option(1.2e-3, "learning rate (peak, after any warm-up)")
    momentum: float = option(0.0, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum (sgd with --momentum > 0)")
    weight_decay: float = option(0.0, "L2 weight decay")
    batch_size: int = option(60, "mini-batch size")
    steps: str = option("50000it", "training length (for imp: per level): '50000it', '160ep' or '2ep100it'")
    schedule: Literal["constant", "multistep", "cosine", "linear"] = option("constant", "learning-rate schedule")
    milestones: tuple[str, ...] = option((), "multistep LR drops, e.g. 80ep 120ep", metavar="STEP")
    gamma: float = option(0.1, "LR factor at each milestone")
    warmup: str = option("0it", "linear LR warm-up length, e.g. 500it")
    eval_every: str = option("1ep", "evaluation (and checkpoint) period, e.g. 1000it or 1ep")
    mask_gradients: bool = option(False, "also zero pruned weights' gradients (for optimisers whose update couples "
                                         "entries)")
    fused_optimizer: bool = option(True, "use PyTorch's default (non-fused) optimiser implementation")
    # Options added after runs exist carry omit_default: at their default they leave the hash (and
    # so every stored run) unchanged.
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"omit_default": True, "cli": False})
    # "stacked": trained as one replicate of a stacked model (ticketlab.replicates, e.g. `--seeds` of a
    # small MLP), which agrees with the solo Trainer to float tolerance, not bit for bit: another run.
    numerics: Literal["solo", "stacked"] = field(default="solo", metadata={"omit_default": "always", "cli": False})

    cli_group = "training"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is unknown; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is unknown; choose one of {SCHEDULES}")
        if self.numerics not in ("solo", "stacked"):
            raise ConfigError(f"numerics {self.numerics!r} is unknown; choose 'solo' or 'stacked'")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(f"momentum applies to sgd only (Adam has betas); got optimizer {self.optimizer!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        object.__setattr__(self, "milestones", tuple(  # a Python int means iterations, as parse_step reads it
            f"{m}it" if isinstance(m, int) and not isinstance(m, bool) else str(m) for m in self.milestones))
        for what in ("steps", "warmup", "eval_every"):
            _check_step(what, getattr(self, what))
        for m in self.milestones:
            _check_step("milestone", m)
        if parse_step(self.eval_every) == (0, 0):
            raise ConfigError(f"eval_every {self.eval_every!r} is zero: evaluations (and checkpoints) need a period "
                              "of at least one iteration, e.g. '1ep' or '500it'")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision {self.precision!r} is unknown; choose 'fp32' or 'bf16' (autocast)")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("schedule 'multistep' needs milestones, e.g. --milestones 80ep 120ep")


# Structured-ticket post-processing of IMP levels (pruning/structure.py keeps the same tuple).
STRUCTURE_MODES = ("none", "refill", "refill+", "regroup")


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune per IMP level and how the cut is spread over layers.

    ``rate`` is the fraction of the *remaining* weights removed per level (LTH: 0.2). ``scope``
    'global' ranks all layers together, 'layerwise' prunes each layer by ``rate``. ``output_rate``
    (LTH prunes LeNet's output layer at half the rate) prunes the output layer separately at its
    own rate in either scope.

    ``include`` names parameters (or modules: their >=2-D weights) pruned besides the Linear/Conv
    weights, e.g. a raw ``nn.Parameter`` used through ``F.linear`` or an embedding; ``exclude``
    names parameters or modules never pruned (see :func:`ticketlab.prunable.prunable_parameters`).
    """

    rate: float = option(0.2, "fraction of the remaining weights removed per level")
    scope: Literal["global", "layerwise"] = option("global", "rank weights globally or within each layer")
    output_rate: float | None = option(None, "prune the output layer separately at this rate (LTH: half of --rate "
                                             "for LeNet)", shown_default="ranked with the other layers")
    include_first: bool = _include_first()
    include_output: bool = _include_output()
    include: tuple[str, ...] = _include_field()
    exclude: tuple[str, ...] = _exclude_field()
    # Added after runs existed: at its default it is left out of the hash and of config.json
    # ("always"), so every stored run and every pinned config digest stays as it was.
    criterion: str = field(default="large_final", metadata={
        "omit_default": "always", "choices": criterion_modes,
        "help": "which weights an IMP level keeps, scored over (w_init, w_final) (Zhou et al. 2019): large_final "
                "(|w_final|, LTH), magnitude_increase, movement, large_init, the same/diff-sign variants, random, "
                "...; registered in pruning/criteria.py"})
    # Structured tickets (Chen et al. 2022, pruning/structure.py), added after runs existed: at their
    # defaults these fields are left out of the hash and of config.json ("always").
    structure: str = field(default="none", metadata={
        "omit_default": "always", "choices": STRUCTURE_MODES,
        "help": "turn each IMP level's mask into a structured one before it is reset and retrained "
                "(Chen et al. 2022): refill (whole channels, as many weights), refill+ (extra channels, "
                "--structure-ratio), regroup (dense blocks of row groups); pruning/structure.py"})
    structure_ratio: float = field(default=0.1, metadata={
        "omit_default": "always", "help": "r of refill+: keep floor(n + r*(C_out - n)) channels, n = kept weights / "
                                          "row length"})
    structure_importance: str = field(default="count", metadata={
        "omit_default": "always", "choices": ("count", "l1"),
        "help": "channel ranking of refill / refill+: count (kept weights per channel, the authors' code) or l1 "
                "(l1 norm of the kept trained weights)"})
    structure_layers: str = field(default="all", metadata={
        "omit_default": "always", "choices": ("all", "conv"),
        "help": "layers --structure acts on: all (masked Conv and Linear weights) or conv (Conv only, as the "
                "authors); never the output layer"})
    structure_parts: int = field(default=8, metadata={
        "omit_default": "always", "help": "regroup: row groups per layer (hMETIS parts in the authors' code)"})
    structure_min_rows: int = field(default=16, metadata={
        "omit_default": "always", "help": "regroup: row groups of at most this many rows give no dense block"})

    def __post_init__(self) -> None:
        _check_names(self)
        if self.criterion not in criterion_modes():
            raise ConfigError(f"criterion {self.criterion!r} is unknown; choose one of {criterion_modes()}")
        _check_structure(self)
        if not 0 <= self.rate < 1:
            raise ConfigError(f"prune rate must be in [0, 1) (fraction of remaining weights removed), got {self.rate}")
        if self.output_rate is not None and not 0 <= self.output_rate < 1:
            raise ConfigError(f"output_rate must be in [0, 1), got {self.output_rate}")
        if self.output_rate is not None and not self.include_output:
            raise ConfigError("output_rate is set but include_output is False: the output layer is not pruned at all")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope {self.scope!r} is unknown; choose one of {SCOPES}")

    @property
    def prunable_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Mask.dense`` / ``prunable_parameters``."""
        return _prunable_options(self)


def _check_structure(p: "PruneConfig") -> None:
    """The structure options: known values, and each one only with the structure that uses it."""
    if p.structure not in STRUCTURE_MODES:
        raise ConfigError(f"structure {p.structure!r} is unknown; choose one of {STRUCTURE_MODES}")
    if p.structure_importance not in ("count", "l1"):
        raise ConfigError(f"structure_importance {p.structure_importance!r} is unknown; choose count or l1")
    if p.structure_layers not in ("all", "conv"):
        raise ConfigError(f"structure_layers {p.structure_layers!r} is unknown; choose all or conv")
    if not 0 < p.structure_ratio <= 1:
        raise ConfigError(f"structure_ratio must be in (0, 1], got {p.structure_ratio}")
    if p.structure_parts < 1 or p.structure_min_rows < 0:
        raise ConfigError(f"structure_parts must be >= 1 and structure_min_rows >= 0, got {p.structure_parts} and "
                          f"{p.structure_min_rows}")
    used = {"structure_ratio": ("refill+",), "structure_importance": ("refill", "refill+"),
            "structure_layers": ("refill", "refill+", "regroup"), "structure_parts": ("regroup",),
            "structure_min_rows": ("regroup",)}
    for name, structures in used.items():
        if getattr(p, name) != PruneConfig.__dataclass_fields__[name].default and p.structure not in structures:
            raise ConfigError(f"{name} is only used with structure {' or '.join(structures)}, not {p.structure!r}")


@dataclass(frozen=True)
class IMPConfig:
    """Iterative magnitude pruning: ``levels`` rounds of train -> prune -> reset."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    levels: int = option(10, "pruning levels after the dense run")
    reset: str = option(
        "init", "what the kept weights restart from after each prune: init (LTH), rewind (to --rewind-step), "
                "lr_rewind (keep the weights, replay the LR schedule from --rewind-step), finetune (keep the "
                "weights and the final LR), or a mask-1 action of Zhou et al. 2019 built from the init "
                "(random_reinit, random_reshuffle, signed_reinit, signed_reshuffle, signed_constant, "
                "rand_signed_constant); registered in experiments/resets.py", choices=reset_modes)
    rewind_step: str = option("0it", "k for rewind / lr_rewind / finetune, e.g. 2000it")
    baselines: tuple[str, ...] = option(BASELINES, "baselines trained at every level: reinit (the ticket's mask, a "
                                                   "fresh init), random (a random mask, the ticket's layer densities)",
                                        choices=BASELINES, nargs="*")
    seed: int = _seed()
    # Added after runs existed: at its default (False) it is left out of the hash and of config.json
    # ("always"), so every stored run and every pinned config digest stays as it was.
    reset_rescale: bool = field(default=False, metadata={
        "omit_default": "always", "help": "multiply the kept weights of a mask-1 reset (random_reinit, ..., "
                                          "rand_signed_constant) by layer size / kept count (Zhou et al. 2019)"})
    # Added after runs existed: at its default ("zero") it is left out of the hash and of config.json.
    mask0: str = field(default="zero", metadata={
        "omit_default": "always", "choices": ("zero", "frozen_init", "variant1", "variant2"),
        "help": "what the ticket's pruned weights are held at while it trains (Zhou et al. 2019's mask-0 actions): "
                "zero (LTH), frozen_init (their init), variant1 (init, or 0 where they moved toward zero), "
                "variant2 (variant1, and kept weights that moved toward zero start at 0); experiments/mask0.py"})

    experiment = "imp"

    def __post_init__(self) -> None:
        if self.levels < 0:
            raise ConfigError(f"levels must be >= 0, got {self.levels}")
        if self.reset not in reset_modes():
            raise ConfigError(f"reset {self.reset!r} is unknown; choose one of {reset_modes()}")
        _check_step("rewind_step", self.rewind_step)
        object.__setattr__(self, "baselines", tuple(self.baselines))
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"baselines {unknown} are unknown; choose from {BASELINES}")
        if self.mask0 not in ("zero", "frozen_init", "variant1", "variant2"):
            raise ConfigError(f"mask0 {self.mask0!r} is unknown; choose zero, frozen_init, variant1 or variant2")
        if self.reset_rescale and not _reset_rescalable(self.reset):
            raise ConfigError(f"reset_rescale applies to the mask-1 resets "
                              f"({', '.join(r for r in reset_modes() if _reset_rescalable(r))}), not {self.reset!r}")
        if self.reset == "init" and parse_step(self.rewind_step) != (0, 0):
            raise ConfigError("rewind_step is only used with reset 'rewind', 'lr_rewind' or 'finetune'; "
                              "use --reset rewind to rewind weights to that step")




def pai_methods() -> tuple[str, ...]:
    """The registered scores (``pruning/scores.py``): every one can prune at initialisation."""
    from .pruning.scores import SCORES

    return tuple(SCORES)

DISTRIBUTION_CHOICES = ("global", "uniform", "erk", "smart", "smart_vgg")
SANITY_CHECKS = ("none", "shuffle", "reinit", "invert")
PRUNE_SCHEDULES = ("exponential", "linear")


@_legacy_keywords
@dataclass(frozen=True)
class PruneAtInitConfig:
    """Prune once before training (SNIP, GraSP, SynFlow, magnitude, random), then train.

    ``density`` is the fraction of prunable weights kept. ``rounds`` None means the method's
    default (100 for SynFlow, as in the paper; 1 otherwise). ``sanity`` applies one check of Su et
    al. / Frankle et al. 2021: ``shuffle`` the mask within each layer, ``reinit`` the kept weights,
    or ``invert`` the scores (keep the lowest). ``include`` / ``exclude`` as in :class:`PruneConfig`.

    ``options`` holds the method's own options, looked up by its name in the score registry:
    ``PruneAtInitConfig(method="grasp", options=GraspOptions(temperature=100))``; None means the
    method's defaults (methods without options keep None). In the hash and in config.json the options
    stay the flat ``grasp_temperature`` key of earlier versions (the default for other methods), so
    stored runs keep their hashes; see ``flat_options``. The flat keyword ``grasp_temperature=``
    still works, deprecated.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = option("snip", "the score that ranks weights (registered in pruning/scores.py)",
                         choices=pai_methods, required=True)
    density: float = option(0.1, "fraction of prunable weights kept, e.g. 0.02", sparsity=True, required=True)
    distribution: str = option("global", "global ranking, or fixed layer-wise densities (uniform, ERK, smart ratios)",
                               choices=DISTRIBUTION_CHOICES)
    rounds: int | None = option(None, "iterative pruning rounds", shown_default="100 for synflow, else 1")
    schedule: str = option("exponential", "density after round k of n: d^(k/n) (exponential) or linear",
                           choices=PRUNE_SCHEDULES, flag="--prune-schedule", dest="prune_schedule")
    score_batches: int = option(1, "mini-batches the data-driven scores read")
    score_batch_size: int = option(256, "size of the mini-batches the scores read")
    options: Any = options_field(pai_options, "the method's own options (GraspOptions for grasp)")
    sanity: str = option("none", "shuffle the mask within layers, re-initialise kept weights, or invert the scores",
                         choices=SANITY_CHECKS)
    include_first: bool = _include_first()
    include_output: bool = _include_output()
    seed: int = _seed()
    include: tuple[str, ...] = _include_field()
    exclude: tuple[str, ...] = _exclude_field()
    # Added after runs existed (issue 22): at their defaults they are left out of the hash and of
    # config.json ("always"), so every stored run keeps its hash and its mask. A non-default value
    # is another mask, so it enters the hash: float32 SynFlow may rank near-ties differently.
    synflow_precision: str = field(default="float64", metadata={
        "omit_default": "always", "choices": ("float64", "float32"),
        "help": "SynFlow's arithmetic: float64 (the masks of earlier runs) or float32 (about 2x faster; rescaled "
                "by powers of two where float32's range needs it; near-ties may rank differently: another mask)"})
    bn_mode: str = field(default="train", metadata={
        "omit_default": "always", "choices": ("train", "eval"),
        "help": "model mode SNIP and GraSP score in: train (BatchNorm batch statistics) or eval (running "
                "statistics, as the Synaptic-Flow code does)"})

    experiment = "prune"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.method not in pai_methods():
            raise ConfigError(f"method {self.method!r} is unknown; choose one of {pai_methods()}")
        _check_options(self)
        if not 0 < self.density <= 1:
            raise ConfigError(f"density (fraction kept) must be in (0, 1], got {self.density}; "
                              f"sparsity 0.98 is density 0.02")
        if self.distribution not in DISTRIBUTION_CHOICES:
            raise ConfigError(f"distribution {self.distribution!r} is unknown; choose one of {DISTRIBUTION_CHOICES}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if self.schedule not in PRUNE_SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is unknown; choose one of {PRUNE_SCHEDULES}")
        if self.score_batches < 1 or self.score_batch_size < 1:
            raise ConfigError("score_batches and score_batch_size must be >= 1")
        if self.sanity not in SANITY_CHECKS:
            raise ConfigError(f"sanity check {self.sanity!r} is unknown; choose one of {SANITY_CHECKS}")
        _check_score_modes(self)

    @property
    def prunable_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Mask.dense`` / ``prunable_parameters``."""
        return _prunable_options(self)

    @property
    def effective_rounds(self) -> int:
        return self.rounds if self.rounds is not None else (100 if self.method == "synflow" else 1)


def _check_score_modes(c: "PruneAtInitConfig") -> None:
    """``synflow_precision`` and ``bn_mode``: known values, non-default only with the methods that read
    them (a no-op value would give one mask two hashes)."""
    if c.synflow_precision not in ("float64", "float32"):
        raise ConfigError(f"synflow_precision {c.synflow_precision!r} is unknown; choose float64 or float32")
    if c.bn_mode not in ("train", "eval"):
        raise ConfigError(f"bn_mode {c.bn_mode!r} is unknown; choose train or eval")
    if c.synflow_precision != "float64" and c.method != "synflow":
        raise ConfigError(f"synflow_precision applies to synflow, not {c.method}")
    if c.bn_mode != "train" and c.method not in ("snip", "grasp"):
        raise ConfigError(f"bn_mode applies to snip and grasp, not {c.method}")


SPARSE_METHODS = ("dense", "static", "set", "rigl", "gmp")


@_legacy_keywords
@dataclass(frozen=True)
class SparseTrainConfig:
    """Train with a mask that is fixed (static), changes (SET, RigL) or shrinks (GMP); or dense.

    ``density`` is the fraction of prunable weights kept (throughout for static/SET/RigL, at the
    end for GMP). ``distribution`` spreads it over layers: the sparse init of static/SET/RigL
    (default ERK, as in RigL) or GMP's targets at every prune (any of them or 'global'; default
    uniform as in Zhu & Gupta). ``include`` / ``exclude`` as in :class:`PruneConfig`.

    ``options`` holds the method's own options, looked up by its name (``pruning/dynamic.py``'s
    ``SPARSE_OPTIONS``): ``DropGrowOptions(delta_t, t_end, alpha)`` for set/rigl (update every
    ``delta_t`` iterations until ``t_end``, a fraction of training, dropping ``alpha``, cosine-decayed,
    of each layer's active weights), ``GMPOptions(start, end, every, initial_sparsity)`` for gmp
    (prune every ``every`` from ``start`` to ``end``; step strings, end default 75% of training);
    None means the method's defaults (dense and static take none). E.g.
    ``SparseTrainConfig(method="rigl", options=DropGrowOptions(delta_t=50))``.

    Compatibility: the hash and config.json keep the flat keys of earlier versions (``delta_t``,
    ``t_end``, ``alpha``, ``gmp_start``, ``gmp_end``, ``gmp_every``, ``gmp_initial_sparsity``), the
    defaults standing in for the options of methods not in use (``flat_options``), so every run
    stored before keeps its hash and its config.json. The flat keywords (``delta_t=50``) still build
    the config (deprecated); one of another method's options is a ConfigError.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: str = option("rigl", "dense, static (fixed random mask), set, rigl, gmp (gradual magnitude pruning)",
                         choices=SPARSE_METHODS, required=True)
    density: float = option(0.1, "fraction of prunable weights kept (at the end, for gmp)", sparsity=True,
                            shown_default="1 for --method dense; the others need --density or --sparsity")
    distribution: str | None = option(None, "sparse init for static/set/rigl: uniform, erk, smart, smart_vgg; "
                                            "gmp: global, uniform, erk, smart, smart_vgg",
                                      shown_default="erk; gmp: uniform", choices=DISTRIBUTION_CHOICES)
    options: Any = options_field(sparse_options, "the method's own options: DropGrowOptions for set/rigl, "
                                                 "GMPOptions for gmp")
    include_first: bool = _include_first()
    include_output: bool = _include_output()
    seed: int = _seed()
    include: tuple[str, ...] = _include_field()
    exclude: tuple[str, ...] = _exclude_field()

    experiment = "sparse"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.method not in SPARSE_METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; choose one of {SPARSE_METHODS}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"density (fraction kept) must be in (0, 1], got {self.density}")
        allowed = DISTRIBUTION_CHOICES if self.method == "gmp" else DISTRIBUTION_CHOICES[1:]
        if self.distribution is not None and self.distribution not in allowed:
            raise ConfigError(f"distribution {self.distribution!r} does not apply to {self.method}; choose one of {allowed}")
        _check_options(self)
        if self.method == "gmp" and not self.options.initial_sparsity < 1 - self.density + 1e-12:
            raise ConfigError(f"gmp_initial_sparsity must be in [0, final sparsity {1 - self.density:g}]")
        if self.method == "rigl" and self.train.mask_gradients:
            raise ConfigError("RigL grows by the dense gradient of pruned weights; it cannot run with mask_gradients")

    @property
    def prunable_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Mask.dense`` / ``prunable_parameters``."""
        return _prunable_options(self)

    @property
    def effective_distribution(self) -> str:
        if self.distribution is not None:
            return self.distribution
        return "uniform" if self.method == "gmp" else "erk"


@dataclass(frozen=True)
class EarlyBirdConfig:
    """Early-bird tickets (You et al. 2020): draw the ticket once its mask stops changing.

    ``kind`` 'channel': network slimming (L1 ``slimming`` on BatchNorm scales), channel mask at
    ``prune_ratio`` (fraction of channels removed, one global |gamma| threshold), the ticket made
    physically smaller; 'unstructured': global weight-magnitude masks, the ticket kept masked.
    The ticket is drawn when the last ``window`` epoch-to-epoch mask distances are all below
    ``epsilon``. The search may use a larger LR (``search_lr``) and bfloat16 (``search_precision``).
    The ticket is retrained for the full schedule from its weights at the draw (``retrain_from``
    'ticket') or from a fresh init ('reinit'); the same is done for the ticket drawn after full
    training, the usual train -> prune -> retrain pipeline. ``include`` / ``exclude`` (unstructured
    kind only) choose the weights the masks cover, as in :class:`PruneConfig`.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    kind: str = option("channel", "channel: network slimming on BN scales, a physically smaller ticket; "
                                  "unstructured: |w| masks", choices=("channel", "unstructured"))
    prune_ratio: float = option(0.5, "sparsity of the ticket: fraction of channels (or weights) removed, 1 - density",
                                flag="--sparsity", deprecated=("--prune-ratio",), metavar="SPARSITY")
    epsilon: float = option(0.1, "draw the ticket when the last --window mask distances are all below this")
    window: int = option(5, "how many consecutive epoch-to-epoch mask distances must be below --epsilon")
    slimming: float = option(1e-4, "L1 strength on BN scales (channel kind)")
    search_lr: float | None = option(None, "a larger LR for the cheap search phase", shown_default="--lr")
    search_precision: str = option("fp32", "precision of the search phase (bf16: autocast)",
                                   choices=("fp32", "bf16"))
    retrain_from: str = option("ticket", "retrain each ticket from its weights at the draw, or from a fresh init",
                               choices=("ticket", "reinit"))
    seed: int = _seed()
    include: tuple[str, ...] = _include_field(" (unstructured kind only)")
    exclude: tuple[str, ...] = _exclude_field(" (unstructured kind only)")

    experiment = "early_bird"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.kind == "channel" and (self.include or self.exclude):
            raise ConfigError("include / exclude choose the weights of unstructured masks; kind 'channel' prunes "
                              "BatchNorm channels (use kind 'unstructured')")
        if self.kind not in ("channel", "unstructured"):
            raise ConfigError(f"kind {self.kind!r} is unknown; choose 'channel' or 'unstructured'")
        if not 0 < self.prune_ratio < 1:
            raise ConfigError(f"prune_ratio (fraction removed) must be in (0, 1), got {self.prune_ratio}")
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"epsilon must be in (0, 1], got {self.epsilon}")
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if self.slimming < 0:
            raise ConfigError(f"slimming (L1 on BN scales) must be >= 0, got {self.slimming}")
        if self.search_lr is not None and self.search_lr <= 0:
            raise ConfigError(f"search_lr must be > 0, got {self.search_lr}")
        if self.search_precision not in ("fp32", "bf16"):
            raise ConfigError(f"search_precision must be 'fp32' or 'bf16', got {self.search_precision!r}")
        if self.retrain_from not in ("ticket", "reinit"):
            raise ConfigError(f"retrain_from must be 'ticket' or 'reinit', got {self.retrain_from!r}")

    @property
    def prunable_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Mask.dense`` (unstructured masks cover every Linear/Conv weight)."""
        return dict(include=self.include, exclude=self.exclude)


SUPERMASK_WEIGHT_INITS = ("keep", "signed_constant")
# The authors' training of the supermask (Zhou et al. 2019; docs/supermask.md): SGD, momentum 0.9,
# constant LR 100, batches of 250, one evaluation per epoch; the non-fused optimiser the supermask
# trainer uses. ``ticketlab supermask``'s defaults (its record's base) and SupermaskConfig's.
SUPERMASK_TRAIN: dict[str, Any] = dict(optimizer="sgd", lr=100.0, momentum=0.9, batch_size=250, steps="10ep",
                                       eval_every="1ep", fused_optimizer=False)


@dataclass(frozen=True)
class SupermaskConfig:
    """A learned Bernoulli supermask of the frozen init (Zhou et al. 2019, Sec. 5; see
    ``pruning/bernoulli_supermask.py``): only the mask logits are trained, the weights never.

    ``train`` maps onto ``train_bernoulli_supermask``: optimizer (sgd or adam), lr, momentum,
    weight_decay, batch_size, steps (whole epochs, e.g. '10ep'), schedule (constant, cosine or
    linear). Options it cannot honour are refused, not ignored: eval_every other than '1ep',
    multistep milestones / gamma, warm-up, nesterov, mask_gradients, the fused optimiser, bf16, adamw,
    and a validation split (``data.val_size``; the procedure reports test accuracy). ``weight_init``
    'keep' (the model's init) or 'signed_constant' (sign(w) * std of the layer); ``dynamic_scaling``
    rescales each layer by size / kept of its sampled mask; ``eval_samples`` sampled masks give the
    final accuracy. ``include`` / ``exclude`` choose the masked weights as in :class:`PruneConfig`.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**SUPERMASK_TRAIN))
    weight_init: str = option("keep", "the frozen weights: the model's init (keep) or sign(w) * std of the layer "
                                      "(signed_constant)", choices=SUPERMASK_WEIGHT_INITS)
    dynamic_scaling: bool = option(False, "multiply each layer by size / kept weights of its sampled mask")
    eval_samples: int = option(10, "sampled masks whose mean test accuracy is the result")
    seed: int = _seed()
    include: tuple[str, ...] = _include_field()
    exclude: tuple[str, ...] = _exclude_field()

    experiment = "supermask"

    def __post_init__(self) -> None:
        _check_names(self)
        if self.weight_init not in SUPERMASK_WEIGHT_INITS:
            raise ConfigError(f"weight_init {self.weight_init!r} is unknown; choose one of {SUPERMASK_WEIGHT_INITS}")
        if not (isinstance(self.eval_samples, int) and self.eval_samples >= 1):
            raise ConfigError(f"eval_samples must be an integer >= 1, got {self.eval_samples!r}")
        if self.data.val_size:
            raise ConfigError(f"the supermask reports test accuracy and uses no validation split; "
                              f"val_size must be 0, got {self.data.val_size}")
        t = self.train
        refused = "the supermask trainer (train_bernoulli_supermask) cannot honour"
        if t.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"{refused} optimizer {t.optimizer!r}; choose sgd or adam")
        epochs, iterations = parse_step(t.steps)
        if iterations or epochs < 1:
            raise ConfigError(f"{refused} steps {t.steps!r}: it trains whole epochs, e.g. '10ep'")
        if parse_step(t.eval_every) != (1, 0):
            raise ConfigError(f"{refused} eval_every {t.eval_every!r}: it evaluates once per epoch ('1ep')")
        if t.schedule == "multistep" or t.milestones or t.gamma != 0.1:
            raise ConfigError(f"{refused} a multistep schedule (milestones, gamma); choose schedule constant, "
                              "cosine or linear")
        if parse_step(t.warmup) != (0, 0):
            raise ConfigError(f"{refused} warmup {t.warmup!r}; leave it at 0it")
        if t.nesterov:
            raise ConfigError(f"{refused} nesterov")
        if t.mask_gradients:
            raise ConfigError(f"{refused} mask_gradients: only the logits are trained, no weight is pruned")
        if t.fused_optimizer:
            raise ConfigError(f"{refused} the fused optimiser; use fused_optimizer=False (--no-fused-optimizer)")
        if t.precision != "fp32":
            raise ConfigError(f"{refused} precision {t.precision!r}; it trains in fp32")

    @property
    def epochs(self) -> int:
        return parse_step(self.train.steps)[0]

    @property
    def prunable_options(self) -> dict[str, Any]:
        """Keyword arguments for ``prunable_parameters`` (the masked weights)."""
        return dict(include=self.include, exclude=self.exclude)


def to_dict(config: Any, *, for_hash: bool = False) -> dict[str, Any]:
    """Plain JSON-able dict of a config; ``for_hash`` leaves out fields marked ``hash: False``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if for_hash and not f.metadata.get("hash", True):
            continue
        if "options" in f.metadata:  # the method's options, as the flat legacy keys (see flat_options)
            out.update(flat_options(config, f))
            continue
        value = getattr(config, f.name)
        omit = f.metadata.get("omit_default")  # True: out of the hash at its default; "always": out of both
        if (for_hash or omit == "always") and omit and value == f.default:
            continue
        if dataclasses.is_dataclass(value):
            value = to_dict(value, for_hash=for_hash)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_hash(config: Any) -> str:
    """Stable 12-hex-digit name for a config: same description, same run folder."""
    payload = {"experiment": getattr(config, "experiment", type(config).__name__),
               "version": CONFIG_VERSION, "config": to_dict(config, for_hash=True)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def imp_config_from_dict(d: dict[str, Any]) -> IMPConfig:
    """Rebuild an IMPConfig from ``to_dict`` output (as stored in a run's config.json)."""
    return IMPConfig(
        data=DataConfig(**d["data"]),
        model=ModelConfig(**d["model"]),
        train=TrainConfig(**{**d["train"], "milestones": tuple(d["train"].get("milestones", ()))}),
        prune=PruneConfig(**d["prune"]),
        levels=d["levels"], reset=d["reset"], rewind_step=d["rewind_step"],
        baselines=tuple(d["baselines"]), seed=d["seed"], reset_rescale=d.get("reset_rescale", False),
    )
