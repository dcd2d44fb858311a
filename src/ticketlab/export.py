"""A ticket as a standalone model: export a stored level and load it back without the Store.

    from ticketlab import Store, load_ticket
    from ticketlab.export import export_run

    export_run(Store("runs"), "3f2a", "ticket_out", level=5, fmt="sparse", batch=60)
    model = load_ticket("ticket_out")          # a ready nn.Module, in eval mode

An export folder holds three files:

- ``ticket.json``: what rebuilds the model (registry name and options, input shape, classes), its
  format, where it came from (run, level, the weights file read) and, for ``sparse``, the form
  chosen for each Linear layer with the timings that chose it;
- ``weights.safetensors``: the weights. ``standalone``: the plain state dict, pruned entries exactly 0
  (any safetensors reader loads it). ``sparse``: each masked tensor whose kept entries are cheaper to
  store as (flat int32 index, value) pairs is stored so; the rest as they are;
- ``export.json``: honest numbers: parameters kept, bytes on disk, measured latency of the exported
  vs. the dense (masked) model at batch 1 and the named batch, the thread count.

Formats. ``standalone`` rebuilds the registry model and loads the weights. ``sparse`` does the same and
then replaces each Linear layer (and each Conv2d whose ``unfold`` form pays) by the form measured fastest
on this machine at export time for its density and shape (``ticketlab.sparse_inference``: CSR, the
CSR arrays computed by ``torch.embedding_bag``, unfold for convs, or dense), separately for small
batches (measured at batch 1) and large ones (measured at ``batch``); dense wherever no sparse form is
clearly faster. A chain model (LeNet, any MLP, Conv-2/4/6) then runs as one flat ``SparseChain``, its
hidden units that cannot change the output removed at load (exactly; ``eliminate_dead_units``; the
stored weights stay full-size and ``ticket.json`` records what was removed, ``dead_units``).
``shrunk`` removes the channels a structured ticket empties. ``onnx`` writes the standalone files plus
``model.onnx`` (batch dimension dynamic), checked under onnxruntime against PyTorch within
``ONNX_TOLERANCE`` before it is written (the optional ``onnx`` extra: onnx and onnxruntime);
``shrunk`` with ``onnx=True`` does the same for the shrunk model.

The ticket of IMP level L is the level's mask (``level_LL/mask.safetensors``; level 0: no weight
pruned) applied to the weights that level trained to (``level_LL/ticket/final.safetensors``).
Loading never unpickles anything (JSON and safetensors only), and every file carries a checksum: a
corrupt, truncated or foreign file gives one :class:`ExportError` naming the file.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write_bytes, atomic_write_text, replace_folder
from .integrity import CorruptFileError, open_json, seal_json, seal_safetensors, verify_safetensors
from .masks import Mask
from .sparse_inference import (CONV_FORMS, FORMS, SparseChain, SparseConv2d, SparseLinear, Timer, _layer_entry,
                               chain_plans, chain_steps, choose_form, choose_forms, convertible_conv,
                               eliminate_dead_units, measure_group, measure_latency, time_group)

__all__ = ["ExportError", "FORMATS", "SparseChain", "SparseConv2d", "SparseLinear", "choose_form", "choose_forms",
           "completed_levels", "export_run", "load_ticket", "measure_group", "measure_latency", "SUPPORTED_EXPERIMENTS"]

FORMATS = ("standalone", "sparse", "shrunk", "onnx")
_FULL_MASK = "__full_mask__."  # shrunk exports: the full-size mask beside the small model's weights
SUPPORTED_EXPERIMENTS = ("imp", "prune", "sparse", "early_bird", "transfer", "deconstruct", "supermask", "strong",
                         "plant")
# The unit exported when none is named, by kind of run (imp: a level's branch; transfer: its deepest level).
DEFAULT_UNITS = {"prune": "train", "sparse": "train", "early_bird": "ticket_retrain"}
BRANCHES = ("ticket", "reinit", "random")
_MARK = "ticketlab-ticket"
_VERSION = 1
TICKET_FILE, WEIGHTS_FILE, REPORT_FILE = "ticket.json", "weights.safetensors", "export.json"
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-5  # largest |onnxruntime - PyTorch| output difference an onnx export may have
_INDEX_SUFFIX = ".__index"  # the flat int32 positions of a tensor stored by its kept entries


class ExportError(ValueError):
    """An export that cannot be made, or an export file that cannot be loaded; the message says why."""


# --- files ---------------------------------------------------------------------------------------------
def _encode(state: Mapping[str, torch.Tensor], sparse_names: set[str]
            ) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Tensors to write: a tensor of ``sparse_names`` as (values, flat int32 indices) when that is smaller."""
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if name in sparse_names and t.is_floating_point():
            flat = t.reshape(-1)
            idx = flat.nonzero().reshape(-1)
            if idx.numel() * (4 + t.element_size()) < t.numel() * t.element_size() and t.numel() < 2**31:
                out[name] = flat[idx].clone()
                out[name + _INDEX_SUFFIX] = idx.to(torch.int32)
                shapes[name] = list(t.shape)
                continue
        out[name] = t
    return out, shapes


def _decode(tensors: Mapping[str, torch.Tensor], shapes: Mapping[str, list[int]], source: Path
            ) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(_INDEX_SUFFIX):
            continue
        if name in shapes:
            idx = tensors.get(name + _INDEX_SUFFIX)
            numel = math.prod(shapes[name])
            bad = idx is None or idx.numel() != t.numel()
            if bad or (idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel)):
                raise ExportError(f"{source} is corrupt: the stored entries of {name!r} do not fit its shape "
                                  f"{shapes[name]}; export the ticket again")
            full = torch.zeros(numel, dtype=t.dtype)
            full[idx.long()] = t
            state[name] = full.reshape(shapes[name])
        else:
            state[name] = t
    return state


def _write_weights(path: Path, state: Mapping[str, torch.Tensor], sparse_names: set[str]) -> None:
    from safetensors.torch import save

    tensors, shapes = _encode(state, sparse_names)
    meta = {"format": _MARK, "version": str(_VERSION), "sparse_shapes": json.dumps(shapes, sort_keys=True)}
    atomic_write_bytes(path, seal_safetensors(save(tensors, metadata=meta)))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path} is missing; an export folder holds {TICKET_FILE} and {WEIGHTS_FILE}") from None
    try:
        meta = verify_safetensors(data, path, require=True)
    except CorruptFileError as exc:
        raise ExportError(f"{path} is not a ticketlab export or is corrupt: {exc.problem}") from None
    if meta.get("format") != _MARK:
        raise ExportError(f"{path} is not a ticketlab ticket weights file (format {meta.get('format')!r})")
    try:
        tensors = load(data)
        shapes = json.loads(meta.get("sparse_shapes", "{}"))
    except Exception as exc:  # safetensors raises several error types for damaged files
        raise ExportError(f"{path} is corrupt ({exc}); export the ticket again") from None
    return _decode(tensors, shapes, path)


def _read_ticket_json(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path} is missing; give an export folder (made by `ticketlab export`) or its "
                          f"{TICKET_FILE}") from None
    try:
        desc = open_json(data, path, require=True)
    except CorruptFileError as exc:
        raise ExportError(f"{path} is not a ticketlab export or is corrupt: {exc.problem}") from None
    if desc.get("format") != _MARK:
        raise ExportError(f"{path} is not a ticketlab ticket description (format {desc.get('format')!r})")
    if desc.get("version") != _VERSION:
        raise ExportError(f"{path} is an export of version {desc.get('version')!r}; this ticketlab reads version "
                          f"{_VERSION}")
    missing = [k for k in ("kind", "model", "model_options", "input_shape", "num_classes") if k not in desc]
    if missing or desc["kind"] not in FORMATS:
        raise ExportError(f"{path} is corrupt: it lacks {missing or ['a known kind']}; export the ticket again")
    return desc


# --- loading -------------------------------------------------------------------------------------------
def _build(desc: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
    from .models import build_model

    model = build_model(desc["model"], tuple(desc["input_shape"]), int(desc["num_classes"]), **desc["model_options"])
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise ExportError(f"the weights in {source} do not fit the model {desc['model']!r} ({exc})") from None
    return model


def _shrink(model: nn.Module, mask: Mask, input_shape: Sequence[int]) -> Any:
    """The dependency-graph shrink of ``model`` under ``mask`` (the ``structured`` extra)."""
    from .pruning import graph_shrink

    if not graph_shrink.available():
        raise ExportError("format 'shrunk' needs the optional package torch-pruning, which is not installed "
                          "(pip install 'ticketlab[structured]'); use --format standalone or sparse")
    return graph_shrink.shrink_weight_mask(model, mask, torch.zeros(1, *input_shape))


def _build_shrunk(desc: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], source: Path) -> nn.Module:
    """A shrunk export: the registry model shrunk by the stored full-size mask (the same channels go),
    then the small model's weights loaded."""
    full = {k[len(_FULL_MASK):]: v.bool() for k, v in tensors.items() if k.startswith(_FULL_MASK)}
    if not full:
        raise ExportError(f"{source} is corrupt: a shrunk export holds the full-size mask it was shrunk by")
    from .models import build_model

    model = build_model(desc["model"], tuple(desc["input_shape"]), int(desc["num_classes"]), **desc["model_options"])
    small = _shrink(model, Mask(full), desc["input_shape"]).model
    try:
        small.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(_FULL_MASK)})
    except RuntimeError as exc:
        raise ExportError(f"the weights in {source} do not fit the shrunk {desc['model']!r} ({exc})") from None
    return small


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _sparsify(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Each Linear layer in its recorded forms (a dense layer after a sparse one is converted too: it
    takes the transposed activations), each conv with a sparse form as a SparseConv2d; a chain model
    then runs as one :class:`SparseChain`. A model whose layers are all dense stays as it is."""
    forms = {name: {int(b): f for b, f in entry["forms"].items()} for name, entry in layers.items()}
    if all(set(f.values()) == {"dense"} for f in forms.values()):
        return model
    for name, layer_forms in forms.items():
        conv = layers[name].get("kind") == "conv2d"
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        fits = convertible_conv(layer) if conv else isinstance(layer, nn.Linear)
        if not fits or not set(layer_forms.values()) <= set(CONV_FORMS if conv else FORMS):
            raise ExportError(f"layer {name!r} of the export is not a {'Conv2d' if conv else 'Linear'} of the model "
                              f"({type(layer).__name__}) or has unknown forms {layer_forms}; export the ticket again")
        if conv and set(layer_forms.values()) != {"dense"}:
            _replace_module(model, name, SparseConv2d(layer, layer_forms))
        elif not conv:
            _replace_module(model, name, SparseLinear(layer.weight, layer.bias, layer_forms))
    steps = chain_steps(model)
    return model if steps is None else SparseChain(model, steps, chain_plans(model))


def _eliminate_as_recorded(model: nn.Module, recorded: Any, ticket: Path) -> None:
    """Dead-unit elimination at load (the stored weights are the full-size masked tensors); what it
    removes must be what the export recorded (and timed the forms on)."""
    got = eliminate_dead_units(model)
    if got != recorded:
        raise ExportError(f"{ticket} is corrupt or does not match its weights: the dead units it records differ "
                          f"from those of the stored weights ({recorded} vs {got}); export the ticket again")


def load_ticket(path: str | Path) -> nn.Module:
    """The exported ticket in ``path`` (an export folder, or its ``ticket.json``) as a ready
    ``nn.Module`` in eval mode; needs no Store. Raises :class:`ExportError` for a missing, corrupt or
    foreign file."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    ticket = path if not path.is_dir() else path / TICKET_FILE
    desc = _read_ticket_json(ticket)
    name = desc.get("weights_file", WEIGHTS_FILE)
    if not isinstance(name, str) or Path(name).name != name:
        raise ExportError(f"{ticket} is corrupt: its weights file {name!r} is not a file name beside it")
    weights = folder / name
    if desc["kind"] == "shrunk":
        return _build_shrunk(desc, _read_weights(weights), weights).eval()
    model = _build(desc, _read_weights(weights), weights)
    if desc["kind"] == "sparse":
        if "dead_units" in desc:  # exports before dead-unit elimination lack it and load at full size
            _eliminate_as_recorded(model, desc["dead_units"], ticket)
        model = _sparsify(model, desc.get("layers", {}))
    return model.eval()


# --- exporting -----------------------------------------------------------------------------------------
def _write_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...], batches: Sequence[int],
                timer: Timer | None, measure_seconds: float) -> dict[str, Any]:
    """``model`` as ONNX (batch dimension dynamic), checked under onnxruntime against PyTorch at every
    measured batch size: a larger difference than ``ONNX_TOLERANCE`` is an error, not a file. Returns
    the largest difference, the opset, the file's SHA-256 and onnxruntime's latency."""
    import hashlib
    import io

    import onnxruntime

    buf = io.BytesIO()
    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated but needs no extra package
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    data = buf.getvalue()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    worst, latency = 0.0, {}
    for b in batches:
        x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b))
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        worst = max(worst, float(abs(got - expected).max()))
        run = functools.partial(session.run, None, {"input": x.numpy()})
        latency[str(b)] = (timer or functools.partial(measure_latency, seconds=measure_seconds))(run) * 1e6
    if not worst <= ONNX_TOLERANCE:
        raise ExportError(f"the ONNX model's outputs differ from PyTorch's by {worst:.3g} (> {ONNX_TOLERANCE}) under "
                          "onnxruntime; nothing was written")
    atomic_write_bytes(path, data)
    return {"max_abs_diff": worst, "tolerance": ONNX_TOLERANCE, "opset": 17, "sha256": hashlib.sha256(data).hexdigest(),
            "onnxruntime": onnxruntime.__version__, "latency_us": latency}
def completed_levels(run: Any) -> list[int]:
    """The IMP levels of ``run`` whose ticket is complete (trained weights and, past level 0, a mask)."""
    levels = []
    for p in sorted(run.path.glob("level_*")):
        try:
            level = int(p.name.split("_", 1)[1])
        except ValueError:
            continue
        if (p / "ticket" / "summary.json").exists() and (level == 0 or (p / "mask.safetensors").exists()):
            levels.append(level)
    return levels


def _input_spec(config: Mapping[str, Any]) -> tuple[tuple[int, ...], int]:
    from .data import load_dataset

    data = config["data"]
    try:
        splits = load_dataset(data["name"], data.get("root"), **data.get("options", {}))
    except Exception as exc:
        raise ExportError(f"the run's data set {data['name']!r} could not be loaded to learn the input shape and "
                          f"classes ({exc}); pass input_shape and num_classes (--input-shape, --num-classes)") from None
    return tuple(splits.input_shape), int(splits.num_classes)


def _apply(state: dict[str, torch.Tensor], mask: Mask, weights_file: str) -> dict[str, torch.Tensor]:
    for name, keep in mask.items():
        if name not in state or state[name].shape != keep.shape:
            raise ExportError(f"the mask does not fit the weights in {weights_file} ({name!r})")
        state[name] = torch.where(keep, state[name], torch.zeros((), dtype=state[name].dtype))
    return state


def _masked_state(run: Any, level: int, branch: str = "ticket") -> tuple[dict[str, torch.Tensor], Mask | None, str]:
    """An IMP level's branch: its trained weights under the level's mask (the random-mask baseline:
    its own random mask; level 0: no mask)."""
    weights_file = f"level_{level:02d}/{branch}/final.safetensors"
    if not run.file(*weights_file.split("/")).exists():
        raise ExportError(f"run {run.hash} has no trained {branch!r} branch at level {level} ({weights_file})")
    state = run.load_tensors(*weights_file.split("/"))
    if level == 0:
        return state, None, weights_file
    mask_file = "random_mask.safetensors" if branch == "random" else "mask.safetensors"
    mask = Mask.load(run.file(f"level_{level:02d}", mask_file), require_checksum=True)
    return _apply(state, mask, weights_file), mask, weights_file


def _unit_state(run: Any, unit: str, model: nn.Module, prunable: Mapping[str, Any],
                mask_file: str | None) -> tuple[dict[str, torch.Tensor], Mask | None, str]:
    """A trained unit of any procedure: its final weights under the run's stored mask (``mask_file``),
    or else under the mask its pruned weights spell (exactly zero in every procedure here),
    checked against the kept count the unit's summary recorded."""
    weights_file = f"{unit}/final.safetensors"
    if not run.is_complete(unit):
        units = sorted(str(p.parent.relative_to(run.path)) for p in run.path.rglob("summary.json")
                       if p.parent != run.path)
        raise ExportError(f"run {run.hash} has no completed unit {unit!r}; its completed units: {units}")
    state = run.load_tensors(*weights_file.split("/"))
    if mask_file is not None:
        mask = Mask.load(run.file(mask_file), require_checksum=True)
        return _apply(state, mask, weights_file), mask, weights_file
    summary = run.read_json(unit, "summary.json")
    names = list(summary.get("layer_density") or Mask.dense(model, **prunable))  # the weights the unit masked
    missing = [n for n in names if n not in state or state[n].shape != dict(model.named_parameters())[n].shape]
    if missing:
        raise ExportError(f"the weights in {weights_file} do not fit the run's model at {missing} (an early-bird "
                          "channel ticket is already a smaller model: it is not exported in this version)")
    mask = Mask({n: state[n] != 0 for n in names})
    kept = summary.get("kept")
    if kept is not None and kept != mask.num_kept:
        raise ExportError(f"{unit}: its summary records {kept} kept weights but {mask.num_kept} are non-zero in "
                          f"{weights_file}; the mask cannot be read from the weights")
    return state, mask, weights_file


@torch.no_grad()
def _supermask_state(run: Any, cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], input_shape: tuple[int, ...],
                     num_classes: int) -> tuple[dict[str, torch.Tensor], Mask, str]:
    """A supermask run's ticket: its deterministic mask on the frozen init, baked into plain weights by
    the supermask's own ``remove`` (signed constants and dynamic scaling as the run used them), so the
    export computes what the run evaluated as its deterministic mask."""
    from .models import build_model
    from .pruning.bernoulli_supermask import BernoulliSupermask

    if run.complete_summary() is None:
        raise ExportError(f"supermask run {run.hash} is not complete; nothing to export yet")
    model = build_model(model_cfg["name"], input_shape, num_classes, **model_cfg.get("options", {}))
    model.load_state_dict(run.load_tensors("init.safetensors"))
    supermask = BernoulliSupermask(model, weight_init=cfg.get("weight_init", "keep"),
                                   dynamic_scaling=bool(cfg.get("dynamic_scaling", False)),
                                   include=tuple(cfg.get("include") or ()), exclude=tuple(cfg.get("exclude") or ()))
    logits = run.load_tensors("logits.safetensors")
    mask = Mask.load(run.file("mask.safetensors"), require_checksum=True)
    for name, param in supermask.named_logits().items():
        if name not in logits or not torch.equal(torch.sigmoid(logits[name]) > 0.5, mask[name]):
            raise ExportError(f"supermask run {run.hash}: the stored logits and mask.safetensors disagree at "
                              f"{name!r}; the run's files are inconsistent")
        param.copy_(logits[name])
    state = {k: v.detach().clone() for k, v in supermask.remove().state_dict().items()}
    return state, mask, "init.safetensors"


def _strong_state(run: Any, cfg: Mapping[str, Any], unit: str, input_shape: tuple[int, ...], num_classes: int
                  ) -> tuple[dict[str, torch.Tensor], Mask, str, dict[str, Any]]:
    """A strong run's ticket: the unit's mask on the seed's frozen U[-1, 1] net (biases unmasked, as
    every strong method uses them). The frozen net is drawn again from the seed (the run stores no
    weights) and exported as the registry's ``mlp`` with the run's hidden widths, so ``ticket.json``
    rebuilds it without the Store; its weights file holds the drawn weights."""
    from .pruning.genetic import FrozenMLP

    seed_part = unit.split("/", 1)[0]
    files = [run.file(*unit.split("/"), name) for name in ("summary.json", "mask.safetensors")]
    if not (seed_part.startswith("seed_") and seed_part[5:].isdigit() and all(f.exists() for f in files)):
        units = sorted(str(p.parent.relative_to(run.path)) for p in run.path.glob("seed_*/*/mask.safetensors"))
        raise ExportError(f"strong run {run.hash} has no completed ticket {unit!r} (the backprop baseline stores no "
                          f"weights); its tickets: {units}")
    widths = [math.prod(input_shape), *cfg["hidden"], num_classes]
    net = FrozenMLP(widths, torch.Generator().manual_seed(int(seed_part[5:])))
    model_cfg = {"name": "mlp", "options": {"hidden": list(cfg["hidden"])}}
    state = {k: v.detach().clone() for k, v in net.to_module().state_dict().items()}
    mask = Mask.load(run.file(*unit.split("/"), "mask.safetensors"), require_checksum=True)
    weights_file = f"{unit} (the frozen net drawn from seed {seed_part[5:]})"
    return _apply(state, mask, weights_file), mask, weights_file, model_cfg


def _plant_state(run: Any, log: Callable[[str], None]
                 ) -> tuple[dict[str, torch.Tensor], Mask, str, dict[str, Any], tuple[int, ...], int]:
    """A planted cell's ticket: its host after weak training under the mask the cell's method found
    (weights and, where the pool prunes them, biases). A cell stores only its row, so the cell is
    recomputed alone and must reproduce its stored row bit for bit (``planting.study.cell_ticket``);
    the host is the registry's ``mlp``, so ``ticket.json`` rebuilds it without the Store. The model
    computes the host's raw output (regression rows rescale it per output, see docs/plant_benchmark.md)."""
    from .planting.study import cell_ticket

    try:
        ticket = cell_ticket(run, log=log)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    state = {k: v.detach().clone() for k, v in ticket["model"].state_dict().items()}
    model_cfg = {"name": "mlp", "options": {"hidden": list(ticket["hidden"])}}
    return (_apply(state, ticket["mask"], "the recomputed cell"), ticket["mask"], "the recomputed cell", model_cfg,
            (ticket["input_dim"],), ticket["output_dim"])


def _file_bytes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_size for name in (TICKET_FILE, WEIGHTS_FILE)}


def export_run(store: Any, run_hash: str, out_dir: str | Path, level: int | None = None, fmt: str = "standalone",
               batch: int = 60, *, branch: str = "ticket", unit: str | None = None,
               input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
               timer: Timer | None = None, measure_seconds: float = 0.05, log: Callable[[str], None] = print,
               onnx: bool = False) -> dict[str, Any]:
    """Export a trained ticket of the run ``run_hash`` of ``store`` into ``out_dir`` in format ``fmt``;
    return the numbers written to ``export.json``.

    Which ticket: an IMP run's ``level`` (default: the last completed one) and ``branch`` (ticket,
    reinit, random); a prune or sparse run's training, an early-bird run's retrained ticket, a
    transfer run's deepest transferred ticket (``level`` / ``branch`` choose another), or any
    completed ``unit`` of these runs (e.g. ``level_03/random``, a deconstruct grid's ticket); a
    supermask run's deterministic mask on its frozen init; a strong run's ``unit`` (default: the first
    seed's ticket) on the seed's frozen net, drawn again; a planted cell's trained host under the mask
    it found, recomputed (a cell stores no weights) and checked against its stored row.

    ``batch`` is the large batch size measured besides batch 1 (for the sparse form's choice and for
    the reported latency). ``timer(fn) -> seconds per call`` replaces the latency measurement (tests).
    ``onnx`` adds ``model.onnx`` of the exported model to a ``shrunk`` (or ``standalone``) export: the
    ONNX file of the physically smaller model (``fmt="onnx"`` is ``standalone`` with ``onnx``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if onnx and fmt not in ("standalone", "shrunk", "onnx"):
        raise ExportError(f"an ONNX file is made of a standalone or shrunk export, not of format {fmt!r} (its sparse "
                          "layers are PyTorch's own); use --format onnx, or --format shrunk with --onnx")
    onnx = onnx or fmt == "onnx"
    if onnx:
        import importlib.util

        if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
            raise ExportError("format 'onnx' needs the optional packages onnx and onnxruntime, which are not "
                              "installed (pip install 'ticketlab[onnx]'); use --format standalone or sparse")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be a positive int, got {batch!r}")
    if branch not in BRANCHES:
        raise ExportError(f"branch must be one of {', '.join(BRANCHES)}, got {branch!r}")
    run = store.run(run_hash)
    config = run.read_json("config.json")
    experiment = config.get("experiment")
    if experiment not in SUPPORTED_EXPERIMENTS:
        raise ExportError(f"run {run.hash} is a {experiment!r} run; export supports {', '.join(SUPPORTED_EXPERIMENTS)} "
                          "runs in this version")
    cfg = config["config"]
    model_cfg, data_cfg = cfg["model"], cfg["data"]
    if experiment in ("transfer", "deconstruct"):  # the model (and its input) are the source IMP run's
        source_cfg = store.run(cfg["source"]).read_json("config.json")["config"]
        model_cfg = source_cfg["model"]
        if input_shape is None:
            input_shape, _ = _input_spec({"data": source_cfg["data"]})
    if experiment != "plant" and (input_shape is None or num_classes is None):  # a task: shapes come with the cell
        shape, classes = _input_spec({"data": data_cfg})
        input_shape = tuple(input_shape or shape)
        num_classes = int(num_classes or classes)
    if experiment == "plant":
        if level is not None or branch != "ticket" or unit is not None:
            raise ExportError("a planted cell holds one ticket (its trained host under the mask it found): --level, "
                              "--branch and --unit do not apply")
        state, mask, weights_file, model_cfg, input_shape, num_classes = _plant_state(run, log)
        mask_from = "the recomputed cell"
    elif experiment == "supermask":
        if level is not None or branch != "ticket" or unit is not None:
            raise ExportError("a supermask run holds one ticket (its deterministic mask on the frozen weights): "
                              "--level, --branch and --unit do not apply")
        state, mask, weights_file = _supermask_state(run, cfg, model_cfg, tuple(input_shape), int(num_classes))
        mask_from = "mask.safetensors"
    elif experiment == "strong":
        if level is not None or branch != "ticket":
            raise ExportError("a strong run's tickets are named by --unit (seed_S/ga, seed_S/edgepopup, seed_S/gem, "
                              "seed_S/edgepopup_ticket, seed_S/edgepopup_D); --level and --branch do not apply")
        unit = unit or f"seed_{cfg['seeds'][0]}/{cfg['method']}"
        state, mask, weights_file, model_cfg = _strong_state(run, cfg, unit, tuple(input_shape), int(num_classes))
        mask_from = f"{unit}/mask.safetensors"
    elif unit is None and experiment in ("imp", "transfer"):
        levels = completed_levels(run) if experiment == "imp" else sorted(
            {r["level"] for r in (run.complete_summary() or {}).get("rows", [])})
        if not levels:
            raise ExportError(f"run {run.hash} has no completed level to export yet")
        level = levels[-1] if level is None else level
        if level not in levels:
            raise ExportError(f"run {run.hash} has no completed level {level}; completed levels: {levels}")
        if experiment == "imp":
            state, mask, weights_file = _masked_state(run, level, branch)
            mask_from = f"level_{level:02d}/{'random_mask' if branch == 'random' else 'mask'}.safetensors"
        else:
            unit = f"level_{level:02d}/{branch}"
    elif level is not None or branch != "ticket":
        raise ExportError(f"--level / --branch choose a level of an imp or transfer run; a {experiment!r} run's "
                          "ticket is named by --unit")
    if experiment not in ("supermask", "strong", "plant") and (unit is not None
                                                              or experiment not in ("imp", "transfer")):
        unit = unit or DEFAULT_UNITS.get(experiment)
        if unit is None:
            raise ExportError(f"a {experiment!r} run holds several tickets: name one with --unit (e.g. "
                              f"{next((str(p.parent.relative_to(run.path)) for p in run.path.rglob('summary.json') if p.parent != run.path), 'UNIT')})")
        from .models import build_model

        skeleton = build_model(model_cfg["name"], tuple(input_shape), int(num_classes), **model_cfg.get("options", {}))
        prunable = {k: cfg.get("prune", cfg).get(k) for k in ("include", "exclude", "include_first", "include_output")
                    if k in cfg.get("prune", cfg)}
        mask_file = "mask.safetensors" if experiment == "prune" and unit == "train" else None
        state, mask, weights_file = _unit_state(run, unit, skeleton, prunable, mask_file)
        mask_from = mask_file or "the zeros of the unit's weights"
    desc: dict[str, Any] = {
        "format": _MARK, "version": _VERSION, "kind": fmt, "model": model_cfg["name"],
        "model_options": model_cfg.get("options", {}), "input_shape": list(input_shape),
        "num_classes": num_classes, "weights_file": WEIGHTS_FILE,
        "source": {"run": run.hash, "experiment": experiment, "level": level, "unit": unit, "weights": weights_file,
                   "mask": None if mask is None else mask_from},
    }
    dense_model = _build(desc, state, run.file(*weights_file.split("/"))).eval()
    out = Path(out_dir)
    batches = sorted({1, batch})
    report: dict[str, Any] = {}

    def write(folder: Path) -> None:
        """The three files, written into a new folder that then replaces ``out`` as a whole: a
        killed export leaves the previous export (or none), never a mix of two."""
        if fmt == "sparse":
            reduced = copy.deepcopy(dense_model)  # the forms are timed on the layers load_ticket will run
            desc["dead_units"] = eliminate_dead_units(reduced)
            desc["layers"] = choose_forms(reduced, batches, timer, measure_seconds, input_shape=tuple(input_shape))
            _describe_reduced_layers(desc["layers"], desc["dead_units"], dense_model)
            _write_weights(folder / WEIGHTS_FILE, state, set() if mask is None else set(mask))
        elif fmt == "shrunk":
            _write_weights(folder / WEIGHTS_FILE, _shrunk_state(dense_model, mask, input_shape, desc), set())
        else:
            _write_weights(folder / WEIGHTS_FILE, state, set())
        atomic_write_text(folder / TICKET_FILE, seal_json(desc))
        exported = load_ticket(folder)  # what a user gets, so the numbers are those of the files written
        report.update(_measure(dense_model, exported, state, mask, input_shape, batches, timer, measure_seconds))
        if fmt == "shrunk":
            report.setdefault("parameters", {})["shrunk_model"] = sum(q.numel() for q in exported.parameters())
        report.update({"format": fmt, "run": run.hash, "level": level, "unit": unit, "weights_from": weights_file,
                       "bytes": {**_file_bytes(folder), "dense_fp32_state": sum(t.numel() * 4 for t in state.values())},
                       "threads": torch.get_num_threads(), "torch": torch.__version__})
        if fmt == "sparse":
            report["dead_units"] = desc["dead_units"]
            report["layer_forms"] = {n: e["forms"] for n, e in desc["layers"].items()}
            report["runs_as"] = type(exported).__name__
        if onnx:
            report["onnx"] = _write_onnx(exported, folder / ONNX_FILE, input_shape, batches, timer, measure_seconds)
            report["bytes"][ONNX_FILE] = (folder / ONNX_FILE).stat().st_size
        atomic_write_text(folder / REPORT_FILE, seal_json(report))

    if out.exists() and (not out.is_dir() or not {p.name for p in out.iterdir()} <= {TICKET_FILE, WEIGHTS_FILE,
                                                                                    REPORT_FILE, ONNX_FILE}):
        raise ExportError(f"{out} holds other files than an export's ({TICKET_FILE}, {WEIGHTS_FILE}, {REPORT_FILE}, "
                          f"{ONNX_FILE}); an export replaces its folder as a whole, so choose a new or empty folder")
    replace_folder(out, write)
    log(describe(report, out))
    return report


def _describe_reduced_layers(layers: dict[str, dict[str, Any]], dead: Mapping[str, Mapping[str, Any]],
                             full: nn.Module) -> None:
    """A layer entry's ``shape`` and ``density`` stay those of the stored (full-size) layer; a layer that
    dead-unit elimination made smaller adds ``computed_shape`` and ``computed_density``, what it runs as."""
    for name, entry in layers.items():
        if name not in dead:
            continue
        full_entry = _layer_entry(full.get_submodule(name).weight)
        stored = (full_entry["shape"], full_entry["density"])
        if stored != (entry["shape"], entry["density"]):
            entry["computed_shape"], entry["computed_density"] = entry["shape"], entry["density"]
            entry["shape"], entry["density"] = stored


@torch.no_grad()
def _shrunk_state(dense: nn.Module, mask: Mask | None, input_shape: tuple[int, ...], desc: dict[str, Any]
                  ) -> dict[str, torch.Tensor]:
    """The small model's weights (and the full-size mask that rebuilds its shape), checked to compute
    the ticket: a ticket whose emptied channels still carry a bias or a BatchNorm shift in training
    is not its shrunk model, and is refused rather than exported as something else."""
    if mask is None:
        raise ExportError("format 'shrunk' removes the channels a mask empties; this ticket has no mask (level 0)")
    result = _shrink(dense, mask, input_shape)
    small = result.model.eval()
    x = torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))
    diff = float((small(x) - dense(x)).abs().max())
    scale = float(dense(x).abs().max()) or 1.0
    if diff > 1e-4 * max(1.0, scale):
        raise ExportError(f"the shrunk model differs from the ticket by up to {diff:.3g}: channels the mask empties "
                          "still carry a bias or BatchNorm shift in the trained ticket (structured IMP holds emptied "
                          "channels' conv/linear biases at zero; BatchNorm shifts are not covered); export it as "
                          "standalone or sparse")
    removed = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in small.parameters())
    if removed == 0:
        raise ExportError("the mask empties no channel that can be removed; format 'shrunk' would give the same "
                          "model: use standalone or sparse")
    desc["shrunk"] = {"parameters_removed": removed, "report": str(result.report)}
    state = dict(small.state_dict())
    state.update({_FULL_MASK + n: t.to(torch.uint8) for n, t in mask.items()})
    return state


@torch.no_grad()
def _measure(dense: nn.Module, exported: nn.Module, state: Mapping[str, torch.Tensor], mask: Mask | None,
             input_shape: tuple[int, ...], batches: list[int], timer: Timer | None, seconds: float
             ) -> dict[str, Any]:
    total = sum(t.numel() for t in state.values())
    pruned = 0 if mask is None else mask.num_total - mask.num_kept
    latency = {}
    gen = torch.Generator().manual_seed(0)
    max_diff = 0.0
    for b in batches:
        x = torch.randn(b, *input_shape, generator=gen)
        max_diff = max(max_diff, float((dense(x) - exported(x)).abs().max()))
        t = time_group({"dense": lambda: dense(x), "export": lambda: exported(x)}, timer, seconds)
        t_dense, t_export = t["dense"], t["export"]
        latency[str(b)] = {"dense_s": t_dense, "export_s": t_export, "speedup": t_dense / t_export}
    return {"parameters": {"total": total, "kept": total - pruned, "pruned": pruned,
                           "masked_density": None if mask is None else mask.density},
            "latency": latency, "max_abs_output_difference": max_diff}


def describe(report: Mapping[str, Any], out: Path | str = "") -> str:
    p, b = report["parameters"], report["bytes"]
    which = (f" level {report['level']}" if report.get("level") is not None else "") + (
        f" unit {report['unit']}" if report.get("unit") else "")
    lines = [f"exported run {report['run'][:12]}{which} as {report['format']} to {out}",
             f"  parameters kept {p['kept']:,} of {p['total']:,}"
             + (f" (masked weights density {p['masked_density']:.4f})" if p["masked_density"] is not None else ""),
             f"  bytes on disk: weights {b[WEIGHTS_FILE]:,}, {TICKET_FILE} {b[TICKET_FILE]:,} "
             f"(dense fp32 state {b['dense_fp32_state']:,}, {b['dense_fp32_state'] / b[WEIGHTS_FILE]:.1f}x)"]
    for batch, t in report["latency"].items():
        lines.append(f"  batch {batch:>4}: dense {t['dense_s'] * 1e6:9.1f} us, exported {t['export_s'] * 1e6:9.1f} us "
                     f"({t['speedup']:.2f}x), threads {report['threads']}")
    if report.get("dead_units"):
        dead = report["dead_units"]
        kept, before = (sum(e["weights"][i] for e in dead.values()) for i in (0, 1))
        smaller = [f"{n} {e['outputs'][0]}/{e['outputs'][1]}" for n, e in dead.items()
                   if e["outputs"][0] < e["outputs"][1]]
        folded = sum(e["folded"] for e in dead.values())
        lines.append(f"  dead hidden units removed (exactly): units kept {', '.join(smaller) or 'all'}"
                     + (f", {folded} constant units folded into biases" if folded else "")
                     + f"; nonzero weights computed {kept:,} of {before:,}")
    if "layer_forms" in report:
        lines.append("  forms: " + ", ".join(f"{n} {f}" for n, f in report["layer_forms"].items())
                     + (f"; runs as {report['runs_as']}" if "runs_as" in report else ""))
    if "onnx" in report:
        o = report["onnx"]
        lines.append(f"  {ONNX_FILE}: {b.get(ONNX_FILE, 0):,} bytes, opset {o['opset']}; under onnxruntime "
                     f"{o['onnxruntime']} its outputs differ from PyTorch's by at most {o['max_abs_diff']:.2g} "
                     f"(tolerance {o['tolerance']:g}); latency " + ", ".join(
                         f"batch {k} {v:.1f} us" for k, v in o["latency_us"].items()))
    return "\n".join(lines)
