"""Lightning module: the U-Net, the eq. 1/2/5 loss, Adam, and checkpoint selection (2.3.1).

Training logs the mean patch loss per epoch (``train_loss``) and on fixed validation
patches (``val_loss``). Every ``checkpoint_every`` epochs, and after the last epoch, the
network is evaluated on the full validation volumes by the paper's rule, the mean absolute
relative organ-dose deviation from MC (:class:`~ctdose.learn.validation.OrganDoseEvaluator`);
that state is a checkpoint, and the best checkpoint (lowest deviation) is kept. Without an
evaluator (no validation case) the last checkpoint is kept.

Two details make short trainings (CPU profiles) usable, both documented where they act:
the network starts as the maximum-likelihood *constant* Gaussian of the training doses
(:meth:`DoseModule.start_at_constant_dose`), and a checkpoint's BatchNorm statistics are
re-estimated at its weights before it is evaluated and saved
(:meth:`DoseModule.calibrated_net`, "precise BatchNorm"). Neither changes the network, the
loss or the optimiser of the paper.

The per-epoch record is :attr:`DoseModule.curves` (one dict per epoch: ``epoch``,
``train_loss``, ``val_loss``, ``val_organ_dev``, NaN where not evaluated).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import lightning as L
import torch

from ..errors import ConfigError
from .loss import MC_UNCERTAINTY_FRACTION, masked_nll_loss
from .settings import LR_SCHEDULES
from .unet import UNet3d

__all__ = ["LR_SCHEDULES", "DoseModule"]


class DoseModule(L.LightningModule):
    """Heteroscedastic dose U-Net with organ-dose checkpoint selection.

    Parameters
    ----------
    width, depth : int
        U-Net width and depth (profile ``train.width``, ``train.depth``).
    learning_rate : float
        Adam learning rate (paper: 1e-3).
    checkpoint_every : int
        Epochs between checkpoints (paper: 100 of 1000).
    floor_fraction : float
        Eq. 5 variance floor (paper: 0.055).
    evaluator : callable, optional
        ``evaluator(net, device) -> float``: validation organ-dose deviation (lower is better).
    lr_schedule : {"constant", "cosine"}
        The paper gives Adam's *initial* learning rate 1e-3 and no schedule; ``"cosine"``
        optionally anneals it to 0 over the training (profile ``train.lr_schedule``).
    initial_dose : (float, float), optional
        Normalised mean and variance of the training doses to start from
        (:meth:`start_at_constant_dose`); profile ``train.start_at_mean_dose``.
    on_fit_end : callable, optional
        ``on_fit_end(module)``, called once on the global-zero process after training (writes
        the chosen checkpoint; works for data-parallel training where this process is a worker).
    """

    def __init__(
        self,
        width: int = 8,
        depth: int = 4,
        learning_rate: float = 1e-3,
        checkpoint_every: int = 1,
        floor_fraction: float = MC_UNCERTAINTY_FRACTION,
        evaluator: Callable[[torch.nn.Module, torch.device], float] | None = None,
        on_fit_end: Callable[["DoseModule"], None] | None = None,
        lr_schedule: str = "constant",
        initial_dose: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.net = UNet3d(2, 2, width, depth)
        self.learning_rate = float(learning_rate)
        self.checkpoint_every = max(int(checkpoint_every), 1)
        self.floor_fraction = float(floor_fraction)
        self.evaluator = evaluator
        self.fit_end_callback = on_fit_end
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"train.lr_schedule = {lr_schedule!r}: expected one of {', '.join(LR_SCHEDULES)}")
        self.lr_schedule = lr_schedule
        if initial_dose is not None:
            self.start_at_constant_dose(*initial_dose)
        self.curves: list[dict] = []
        self.best_state: dict | None = None
        self.best_epoch: int = -1
        self.best_metric: float = math.inf
        self._sums = {"train": [0.0, 0], "val": [0.0, 0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def start_at_constant_dose(self, dose_normalised: float, variance_normalised: float | None = None) -> None:
        """Start from the constant-dose model: mu(x) = mean dose, sigma_tilde^2(x) = dose variance.

        The two rows of the 1x1x1 output convolution are zeroed and their biases set so that
        the untrained network is the maximum-likelihood constant Gaussian of the training doses
        (mean and variance over the body voxels, normalised units). Gradients reach every layer
        after the first step. Without this the first epochs of a short training are spent
        finding the dose level, and a too large initial variance (softplus(0) = 0.69) damps the
        gradient of eq. 1 with respect to mu by ``1 / sigma^2``.
        """
        self.net.head.weight[0].zero_()
        self.net.head.bias[0] = float(dose_normalised)
        if variance_normalised is not None and variance_normalised > 0:
            self.net.head.weight[1].zero_()
            self.net.head.bias[1] = float(math.log(math.expm1(variance_normalised)))  # softplus^-1

    @torch.no_grad()
    def calibrated_net(self) -> torch.nn.Module:
        """A copy of the network whose BatchNorm statistics are re-estimated at the current weights.

        BatchNorm's running averages (momentum 0.1) trail the weights during training; in a
        short training they are far from the statistics of the final weights and the
        full-volume predictions of a checkpoint jump from one to the next. The copy's running
        mean and variance are recomputed as plain averages over fixed training patches
        (``calibration_batches`` of the data module, "precise BatchNorm"); the weights are
        unchanged. Without calibration patches the network itself is returned.
        """
        batches = getattr(getattr(self.trainer, "datamodule", None), "calibration_batches", None)
        batches = list(batches()) if batches is not None else []
        if not batches:
            return self.net
        net = copy.deepcopy(self.net)
        norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        net.train()
        for inputs in batches:
            net(inputs.to(self.device).contiguous(memory_format=torch.channels_last_3d))
        for m, original in zip(norms, (m for m in self.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))):
            m.momentum = original.momentum
        return net.eval()

    def configure_optimizers(self):
        optimiser = torch.optim.Adam(self.parameters(), lr=self.learning_rate)
        if self.lr_schedule == "constant":
            return optimiser
        epochs = max(int(self.trainer.max_epochs or 1), 1) if self._trainer is not None else 1
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": cosine, "interval": "epoch"}}

    def _step(self, batch, stage: str) -> torch.Tensor:
        inputs, target, mask = batch
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        loss = masked_nll_loss(self.net(inputs), target, mask, self.floor_fraction)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=inputs.shape[0],
                 prog_bar=stage == "train")
        sums = self._sums[stage]
        sums[0] += float(loss.detach()) * inputs.shape[0]
        sums[1] += inputs.shape[0]
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def _mean(self, stage: str) -> float:
        total, n = self._sums[stage]
        self._sums[stage] = [0.0, 0]
        return total / n if n else math.nan

    def is_checkpoint_epoch(self, epoch: int) -> bool:
        """Checkpoints after every ``checkpoint_every``-th epoch and after the last one."""
        last = self.trainer is not None and epoch + 1 >= (self.trainer.max_epochs or 0)
        return (epoch + 1) % self.checkpoint_every == 0 or last

    def on_train_epoch_end(self) -> None:
        epoch = int(self.current_epoch)
        row = {"epoch": epoch + 1, "train_loss": self._mean("train"), "val_loss": self._mean("val"),
               "val_organ_dev": math.nan}
        if self.is_checkpoint_epoch(epoch):
            net = self.calibrated_net()
            metric = self.evaluator(net, self.device) if self.evaluator is not None else math.nan
            row["val_organ_dev"] = metric
            finite = math.isfinite(metric)
            if (
                self.best_state is None
                or (finite and metric < self.best_metric)
                or (not finite and not math.isfinite(self.best_metric))
            ):
                self.best_metric = metric if finite else math.inf
                self.best_epoch = epoch + 1
                self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in net.state_dict().items()})
            if finite:
                self.log("val_organ_dev", metric, prog_bar=True)
        self.curves.append(row)

    def on_fit_end(self) -> None:
        if self.fit_end_callback is not None and self.trainer.is_global_zero:
            self.fit_end_callback(self)
