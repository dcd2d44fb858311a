"""Zhou et al.'s mask-0 actions: what the ticket's pruned weights are held at while it trains."""
import pytest
import torch
from torch import nn

from ticketlab.config import DataConfig, IMPConfig, ModelConfig, PruneConfig, TrainConfig, config_hash
from ticketlab.data import ArrayData, DataSplits
from ticketlab.experiments.common import MaskViolation, check_pruned_weights
from ticketlab.experiments.imp import run_imp
from ticketlab.experiments.mask0 import pruned_values, start_weights
from ticketlab.masks import Mask
from ticketlab.store import Store
from ticketlab.training import Trainer

INIT = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]])}
FINAL = {"w": torch.tensor([[0.5, -3.0], [1.0, 1.0]])}   # |w| fell at (0,0) and (1,1)
MASK = Mask({"w": torch.tensor([[True, False], [False, False]])})


def test_pruned_values_by_hand():
    assert pruned_values("zero", INIT, FINAL, MASK) is None
    assert torch.equal(pruned_values("frozen_init", INIT, FINAL, MASK)["w"], torch.tensor([[0.0, -2.0], [0.5, 3.0]]))
    # variant 1/2: pruned weights that moved toward zero (|w_i| > |w_f|: (1,1)) are held at 0, the rest at w_i
    for kind in ("variant1", "variant2"):
        assert torch.equal(pruned_values(kind, INIT, FINAL, MASK)["w"], torch.tensor([[0.0, -2.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="unknown"):
        pruned_values("freeze", INIT, FINAL, MASK)


def test_variant2_starts_kept_weights_that_moved_toward_zero_at_zero():
    start = {"w": torch.full((2, 2), 9.0), "b": torch.ones(2)}
    assert torch.equal(start_weights("variant2", start, INIT, FINAL, MASK)["w"], torch.tensor([[0.0, 9.0], [9.0, 9.0]]))
    for kind in ("zero", "frozen_init", "variant1"):  # the others start where the reset puts them
        assert torch.equal(start_weights(kind, start, INIT, FINAL, MASK)["w"], start["w"])
    assert start_weights("variant2", start, INIT, FINAL, MASK)["b"] is start["b"]


def _data() -> DataSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return DataSplits("toy", ArrayData(x[:96], y[:96]), ArrayData(x[96:], y[96:]), 2, (6,))


@pytest.mark.parametrize("cfg", [TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=16,
                                             steps="3ep", eval_every="3ep"),
                                 TrainConfig(optimizer="adam", lr=1e-2, batch_size=16, steps="3ep", eval_every="3ep")])
def test_trainer_holds_pruned_weights_at_their_values(cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = Mask({n: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.5
                 for n, p in model.named_parameters() if n.endswith("weight")})
    values = {n: torch.randn(mask[n].shape) for n in mask}
    Trainer(model, _data(), cfg, mask, pruned_values=values, device="cpu").train()
    for n, p in model.named_parameters():
        if n in mask:
            assert torch.equal(p.detach()[~mask[n]], values[n][~mask[n]]), n  # held exactly, every step
            assert not torch.equal(p.detach()[mask[n]], before[n][mask[n]]), n  # the kept ones trained
    check_pruned_weights(model, mask, "unit", pruned_values=values)
    with pytest.raises(MaskViolation, match="not at their frozen values"):
        check_pruned_weights(model, mask, "unit", pruned_values={n: v + 1 for n, v in values.items()})
    with pytest.raises(MaskViolation, match="not zero"):
        check_pruned_weights(model, mask, "unit")


def _imp(mask0: str) -> IMPConfig:
    return IMPConfig(data=DataConfig(name="synthetic_mlp", val_size=16, options={"n_train": 128, "n_test": 32, "dim": 6}),
                     model=ModelConfig(name="mlp", options={"hidden": [12]}),
                     train=TrainConfig(optimizer="adam", lr=3e-3, batch_size=32, steps="2ep", eval_every="1ep"),
                     levels=2, prune=PruneConfig(rate=0.5), baselines=("reinit",), mask0=mask0)


@pytest.mark.parametrize("mask0", ["frozen_init", "variant1", "variant2"])
def test_imp_ticket_holds_pruned_weights_as_the_action_says(tmp_path, mask0):
    store = Store(tmp_path)
    cfg = _imp(mask0)
    run_imp(cfg, store, progress=False, log=lambda text: None)
    run = store.run(config_hash(cfg))
    init = run.load_tensors("init.safetensors")
    for level in (1, 2):
        mask = Mask.load(run.file(f"level_{level:02d}", "mask.safetensors"))
        start = run.load_tensors(f"level_{level - 1:02d}", "ticket", "final.safetensors")  # what the mask came from
        final = run.load_tensors(f"level_{level:02d}", "ticket", "final.safetensors")
        expected = pruned_values(mask0, init, start, mask)
        for name in mask:
            pruned = ~mask[name]
            assert torch.equal(final[name][pruned], expected[name][pruned]), (level, name)  # held exactly
        if mask0 == "frozen_init":
            assert all(torch.equal(final[n][~mask[n]], init[n][~mask[n]]) for n in mask)
        else:  # some pruned weights moved toward zero and are held at 0, the others at their init
            held_zero = sum(int((final[n][~mask[n]] == 0).sum()) for n in mask)
            assert 0 < held_zero < sum(int((~mask[n]).sum()) for n in mask)
    levels = run.read_jsonl("levels.jsonl")
    assert [r["branch"] for r in levels] == ["ticket", "ticket", "reinit", "ticket", "reinit"]
    assert abs(levels[3]["density"] - 0.25) < 0.01  # densities count the trainable weights


def test_mask0_default_leaves_the_config_hash_alone():
    assert config_hash(_imp("zero")) == config_hash(IMPConfig(data=_imp("zero").data, model=_imp("zero").model,
                                                              train=_imp("zero").train, levels=2, prune=PruneConfig(rate=0.5),
                                                              baselines=("reinit",)))
    assert config_hash(_imp("frozen_init")) != config_hash(_imp("zero"))
    with pytest.raises(Exception, match="mask0"):
        _imp("nope")
