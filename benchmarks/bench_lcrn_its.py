"""LCRN training iterations per second at the paper's image sizes.

The paper reports 14.3 it/s (ginkgo, 2700×980) and 8.0 it/s (mint, 1800×2550) on an RTX 4090,
one iteration = one full-image Adam step with MSE + edge perceptual loss. This script times
exactly that step with our implementation, on CUDA (with and without bf16 autocast) when
present, else on the CPU, and prints a markdown table row per size.

    python benchmarks/bench_lcrn_its.py [--device auto|cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import time
from datetime import date

import torch
import torch.nn.functional as F

from msifusion.runtime import resolve_device
from msifusion.losses import edge_map, edge_perceptual_loss, luminance_t
from msifusion.models.lcrn import LCRN
from msifusion.provenance import cpu_model

from bench_options import at_least, device_name

SIZES = {"ginkgo 2700×980": (2700, 980), "mint 1800×2550": (1800, 2550)}
PAPER_ITS = {"ginkgo 2700×980": 14.3, "mint 1800×2550": 8.0}


def time_steps(shape: tuple[int, int], device: torch.device, steps: int, autocast: bool) -> float:
    """Seconds per full-image training step (after one warm-up step)."""
    torch.manual_seed(0)
    model = LCRN().to(device)
    x = torch.rand(1, 3, *shape, device=device)
    y = torch.rand(1, 1, *shape, device=device)
    target_edges = edge_map(luminance_t(x))
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out = out.float()
        loss = F.mse_loss(out, y) + edge_perceptual_loss(out, target_edges)
        loss.backward()
        opt.step()
        return loss.item()  # read every step, as fit_network reads its losses (on CUDA: a sync per step)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto, cpu or cuda[:N] (default auto: CUDA where present)")
    parser.add_argument("--steps", type=at_least(1), default=None, help="timed steps (default: 20 on CUDA, 2 on CPU)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    steps = args.steps if args.steps is not None else (20 if device.type == "cuda" else 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"# LCRN it/s, {name}, torch {torch.__version__}, {date.today()}")
    print("| size | precision | s/it | it/s | paper (RTX 4090) |")
    print("| --- | --- | --- | --- | --- |")
    modes = [False, True] if device.type == "cuda" else [False]
    for label, shape in SIZES.items():
        for autocast in modes:
            seconds = time_steps(shape, device, steps, autocast)
            print(f"| {label} | {'bf16 autocast' if autocast else 'fp32'} | {seconds:.3f} | {1 / seconds:.2f} | {PAPER_ITS[label]} |",
                  flush=True)


if __name__ == "__main__":
    main()
