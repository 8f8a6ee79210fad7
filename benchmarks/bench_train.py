"""Benchmark: U-Net training throughput and full-volume ensemble inference time.

Figures (CPU always; CUDA too when a GPU is visible):

- training throughput in patches per second (forward, eq. 1/2/5 loss, backward, Adam step)
  for the demo and paper network sizes, 32^3 patches, batch 32 (demo: smaller batches in
  quick mode);
- the time a 5-member ensemble needs to predict a thorax (mu and sigma_aleatoric per
  member, eq. 5 floor included, Gy per mAs) at the demo (6 mm) and paper (2.5 mm) voxel
  size. The thorax is a 36 x 26 cm elliptic body over 30 cm of z in a 42 x 32 cm field;
  windows without body voxels are skipped, as in ctdose's prediction. Goal (issue 5):
  < 30 s on 2 CPU cores, < 1 s on an H100.

Run ``python benchmarks/bench_train.py`` (``--quick`` for a short version).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ctdose.config import load_profile
from ctdose.learn.checkpoint import Member
from ctdose.learn.inference import predict_members
from ctdose.learn.loss import masked_nll_loss
from ctdose.learn.normalise import MinMax, Normaliser
from ctdose.learn.unet import UNet3d

THORAX_FIELD_MM = (300.0, 320.0, 420.0)  # z, y, x extent of the grid
BODY_SEMI_AXES_MM = (130.0, 180.0)  # y, x
N_MEMBERS = 5
RHO_WATER_M3 = 3.343e29


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def training_throughput(width: int, depth: int, patch: int, batch: int, steps: int, device: str) -> float:
    """Patches per second of training steps (after one warm-up step)."""
    torch.manual_seed(0)
    net = UNet3d(2, 2, width, depth).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 2, patch, patch, patch, device=device)
    y = torch.rand(batch, 1, patch, patch, patch, device=device)
    m = (torch.rand(batch, 1, patch, patch, patch, device=device) > 0.3).float()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = masked_nll_loss(net(x), y, m)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def thorax(spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Electron density, kerma map and body mask of a synthetic thorax on an isotropic grid."""
    shape = tuple(int(round(e / spacing_mm)) for e in THORAX_FIELD_MM)
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * spacing_mm
    x = (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing_mm
    yy, xx = np.meshgrid(y, x, indexing="ij")
    body2d = (yy / BODY_SEMI_AXES_MM[0]) ** 2 + (xx / BODY_SEMI_AXES_MM[1]) ** 2 <= 1
    body = np.broadcast_to(body2d, shape)
    density = np.where(body, RHO_WATER_M3, 1e-3 * RHO_WATER_M3).astype(np.float32)
    kerma = np.broadcast_to((1e-4 * (0.3 + (xx**2 + yy**2) / 200.0**2)).astype(np.float32), shape)
    return density, kerma, body


def ensemble_inference_seconds(spacing_mm: float, width: int, depth: int, window: int, device: str,
                               batch_size: int) -> tuple[float, int]:
    density, kerma, body = thorax(spacing_mm)
    norm = Normaliser(MinMax(0.0, 4e29), MinMax(0.0, 4e-4), MinMax(0.0, 4e-4))
    members = []
    for k in range(N_MEMBERS):
        torch.manual_seed(k)
        net = UNet3d(2, 2, width, depth).eval()
        members.append(Member(net, norm, {"kerma_mode": "cylinder", "floor_fraction": 0.055, "patch_size": window}))
    predict_members(members[:1], density[:window], kerma[:window], window=window, device=device,
                    batch_size=batch_size, mask=body[:window])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    mu, sigma = predict_members(members, density, kerma, window=window, device=device, batch_size=batch_size,
                                mask=body)
    _sync(device)
    assert mu.shape == (N_MEMBERS, *density.shape) and np.all(sigma[:, body] > 0)
    return time.perf_counter() - t0, int(np.prod(density.shape))


def run(quick: bool = False) -> list[dict]:
    rows = []
    demo, paper = load_profile("demo")["train"], load_profile("paper")["train"]
    threads = torch.get_num_threads()
    for device in _devices():
        where = f"{device}" + (f", {threads} threads" if device == "cpu" else "")
        for name, t in (("demo", demo), ("paper", paper)):
            batch = int(t["batch_size"]) if device == "cuda" or not quick else 8
            steps = 2 if (quick and device == "cpu") else 5
            value = training_throughput(int(t["width"]), int(t["depth"]), int(t["patch_size"]), batch, steps, device)
            rows.append({"benchmark": f"train throughput, {name} net (width {t['width']}), {where}",
                         "value": round(value, 2), "unit": "patches/s",
                         "note": f"{t['patch_size']}^3 patches, batch {batch}"})
        cases = [(6.0, demo), (2.5, demo), (2.5, paper)]
        if quick and device == "cpu":
            cases = [(6.0, demo), (2.5, demo)]
        for spacing, t in cases:
            window = int(t.get("infer_window") or t["patch_size"])
            seconds, n_vox = ensemble_inference_seconds(spacing, int(t["width"]), int(t["depth"]), window, device,
                                                        int(t.get("infer_batch_size", 4)))
            rows.append({"benchmark": f"5-member thorax inference, {spacing} mm, width {t['width']}, {where}",
                         "value": round(seconds, 2), "unit": "s",
                         "note": f"{n_vox} voxels, window {window}, goal < 30 s on 2 CPU cores / < 1 s on H100"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rows = run(args.quick)
    width = max(len(r["benchmark"]) for r in rows)
    for r in rows:
        print(f"{r['benchmark']:<{width}}  {r['value']:>10} {r['unit']:<10} {r['note']}")


if __name__ == "__main__":
    main()
