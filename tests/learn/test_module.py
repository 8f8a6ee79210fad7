import math

import lightning as L
import pytest

from ctdose.learn.module import DoseModule
from ctdose.learn.normalise import fit_normaliser
from ctdose.learn.patches import PatchDataModule


class ScriptedEvaluator:
    """Returns a fixed sequence of validation organ-dose deviations."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, net, device):
        self.calls += 1
        return self.values.pop(0)


@pytest.mark.parametrize("every,values,evaluated,best", [
    (1, [0.5, 0.2, 0.3], [1, 2, 3], 2),
    (2, [0.4, 0.1], [2, 3], 3),  # every 2nd epoch plus the last one
])
def test_best_checkpoint_is_chosen_by_validation_organ_dose(learning_store, every, values, evaluated, best):
    ids = learning_store.case_ids()
    norm = fit_normaliser(learning_store, ids[:4], "cylinder")
    data = PatchDataModule(learning_store, "cylinder", norm, ids[:4], ids[4:5], 8, 8, 8, seed=0, val_patches=8)
    evaluator = ScriptedEvaluator(values)
    module = DoseModule(width=2, depth=2, checkpoint_every=every, evaluator=evaluator)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1,
                        accelerator="cpu", log_every_n_steps=1)
    trainer.fit(module, datamodule=data)
    assert [r["epoch"] for r in module.curves if not math.isnan(r["val_organ_dev"])] == evaluated
    assert module.best_epoch == best and module.best_metric == min(values)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in module.curves)


def test_start_at_constant_dose_is_the_constant_gaussian():
    import torch

    module = DoseModule(width=2, depth=2, initial_dose=(0.3, 0.004))
    out = module.net.eval()(torch.rand(2, 2, 8, 8, 8))
    assert torch.allclose(out[:, 0], torch.tensor(0.3)) and torch.allclose(out[:, 1], torch.tensor(0.004), rtol=1e-4)


def test_calibrated_batchnorm_statistics_are_plain_averages(learning_store):
    import torch

    ids = learning_store.case_ids()
    norm = fit_normaliser(learning_store, ids[:4], "cylinder")
    data = PatchDataModule(learning_store, "cylinder", norm, ids[:4], ids[4:5], 8, 8, 8, seed=0,
                           calibration_patches=24)
    module = DoseModule(width=2, depth=2)

    class FakeTrainer:
        datamodule = data

    module._trainer = FakeTrainer()
    calibrated = module.calibrated_net()
    first_conv, first_bn = module.net.encoders[0][0], calibrated.encoders[0][1]
    with torch.no_grad():
        feats = [first_conv(x) for x in data.calibration_batches()]
    assert [f.shape[0] for f in feats] == [8, 8, 8]
    # momentum=None: equal-weight averages of the per-batch mean and unbiased variance
    batch_means = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats])
    batch_vars = torch.stack([f.var(dim=(0, 2, 3, 4), unbiased=True) for f in feats])
    assert torch.allclose(first_bn.running_mean, batch_means.mean(0), atol=1e-6)
    assert torch.allclose(first_bn.running_var, batch_vars.mean(0), rtol=1e-5)
    assert first_bn.momentum == module.net.encoders[0][1].momentum  # restored
    assert torch.equal(module.net.encoders[0][1].running_mean, torch.zeros(2))  # original untouched
