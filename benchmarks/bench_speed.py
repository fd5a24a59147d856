"""Speed and memory of the default method at the paper's size, on a microscope-sized guide, and for many ions.

Each task runs in its own process so that its peak memory (``ru_maxrss``) is its own:

- ``ginkgo``: a 135×49 ion image at ×20 (2700×980 guide; a leaf phantom of that size), the
  default method, wall seconds and peak memory; PSNR against the phantom's truth.
- ``lcrn``: the same case with ``--method lcrn`` and the paper's recipe (Adam 3e-4, ≤ 2000
  epochs, edge-loss early stopping): the ratio to the default method. ``lcrn-bf16``: the
  same with bfloat16 autocast (CUDA only; ``Runtime.bf16``).
- ``large``: an 11920×4820 RGB guide (the size of the paper's mint microscope image) at ×20,
  the default method (solved in tiles with a halo).
- ``many``: ``--ions`` ion images (mixtures of the phantom's four chemistry profiles, each
  measured with its own noise) fused together on the ginkgo-sized guide (through a shared
  basis where the panel allows); then the first ``--check`` of them fused alone: the PSNR
  difference (shared − alone) against the truth, and the largest pixel difference.
- ``panel``: like ``many``, but each ion also has its own random amount per cell (lognormal,
  σ 0.3): ion images that differ by more than noise, as real panels do (docs/benchmarks.md
  §3b), so no shared basis applies and every ion is fused alone; the first ``--check`` are
  compared with the same ion fused on its own.
- ``prostate``: real data, the ``--panel`` strongest peaks of the prostate example imzML
  (its 25 µm images as truth) measured at ×4, fused as a panel and each alone: the PSNR
  difference against the truth (needs the example data, ``msifusion example prostate``).

Prints one JSON line per task (peak host memory; on CUDA also the GPU and its peak allocation).

    python benchmarks/bench_speed.py [--tasks T1,T2,…] [--ions 100] [--check 3] [--panel 30] [--device auto]

(tasks: ginkgo, lcrn, lcrn-bf16, large, many, panel, prostate; by default ginkgo,lcrn,large,many)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from bench_options import at_least, comma_list, device_name, header

GINKGO = (980, 2700)  # fine (rows, cols): ion 49×135 at ×20
LARGE = (4820, 11920)  # the paper's 4837×11939 microscope image, cut to a multiple of 20
SCALE = 20
TASKS = ("ginkgo", "lcrn", "lcrn-bf16", "large", "many", "panel", "prostate")
PROFILES = ("apigenin", "pheophytin", "sucrose", "gradient")


def _phantom_case(shape: tuple[int, int], ion: str = "apigenin"):
    from msifusion.phantom import PhantomConfig, make_phantom

    return make_phantom(PhantomConfig(fine_shape=shape, seed=7, kind="leaf", ion=ion))


def _large_case() -> tuple[np.ndarray, np.ndarray]:
    """A microscope-sized guide (a ginkgo-sized phantom tiled to 4820×11920) and its block-averaged ion."""
    from msifusion.measurement import block_mean

    p = _phantom_case(GINKGO)
    reps = (-(-LARGE[0] // GINKGO[0]), -(-LARGE[1] // GINKGO[1]))
    guide = np.tile(p.guide, (reps[0], reps[1], 1))[:LARGE[0], :LARGE[1]]
    truth = np.tile(p.truth, reps)[:LARGE[0], :LARGE[1]]
    return np.ascontiguousarray(guide), block_mean(truth, SCALE)


def _sharing(results) -> dict:
    """The shared basis's rank and how many ions were fused alone (from each result's details)."""
    ranks = [r.fit.details["shared_basis"]["rank"] for r in results if "shared_basis" in r.fit.details]
    return {"shared_rank": ranks[0] if ranks else 0, "fused_alone": len(results) - len(ranks)}


def task(name: str, args: argparse.Namespace) -> dict:
    from msifusion.runtime import Runtime
    from msifusion.methods import DEFAULT_METHOD, MethodOptions, fuse, fuse_many
    from msifusion.metrics import psnr

    options = MethodOptions(runtime=Runtime(device=args.device, quiet=True, bf16=name == "lcrn-bf16"))
    row: dict = {"task": name}
    if name in ("ginkgo", "lcrn", "lcrn-bf16"):
        p = _phantom_case(GINKGO)
        method = DEFAULT_METHOD if name == "ginkgo" else "lcrn"
        start = time.perf_counter()
        result = fuse(p.guide, p.measure(SCALE), method, options)
        row.update(method=method, seconds=time.perf_counter() - start, psnr=psnr(result.image, p.truth),
                   epochs=result.fit.epochs, consistency=result.consistency_error)
    elif name == "large":
        guide, ion = _large_case()
        start = time.perf_counter()
        result = fuse(guide, ion, DEFAULT_METHOD, options)
        row.update(method=DEFAULT_METHOD, seconds=time.perf_counter() - start, guide=list(guide.shape),
                   consistency=result.consistency_error)
    elif name in ("many", "panel"):
        phantoms = [_phantom_case(GINKGO, ion) for ion in PROFILES]  # same seed: same section, four chemistries
        rng = np.random.default_rng(0)
        weights = rng.dirichlet(np.full(len(PROFILES), 0.3), args.ions).astype(np.float32)
        truths = np.einsum("kp,phw->khw", weights, np.stack([p.truth for p in phantoms]))
        if name == "panel":  # each ion its own amount per cell: no low-rank panel
            cells = phantoms[0].cells
            per_cell = np.exp(0.3 * rng.standard_normal((args.ions, int(cells.max()) + 1))).astype(np.float32)
            for k in range(args.ions):
                truths[k] *= per_cell[k][cells]
        from msifusion.measurement import block_mean

        measured = block_mean(truths, SCALE)
        measured = np.clip(measured + 0.02 * rng.standard_normal(measured.shape).astype(np.float32)
                           * measured.max(axis=(1, 2), keepdims=True), 0, None)
        guide = phantoms[0].guide
        start = time.perf_counter()
        results = fuse_many(guide, measured, DEFAULT_METHOD, options)
        seconds = time.perf_counter() - start
        gaps, worst = [], 0.0
        for k in range(min(args.check, args.ions)):
            alone = fuse(guide, measured[k], DEFAULT_METHOD, options).image
            worst = max(worst, float(np.abs(alone - results[k].image).max() / measured[k].max()))
            gaps.append(psnr(results[k].image, truths[k]) - psnr(alone, truths[k]))
        row.update(method=DEFAULT_METHOD, ions=args.ions, seconds=seconds, seconds_per_ion=seconds / args.ions,
                   mean_psnr=float(np.mean([psnr(r.image, t) for r, t in zip(results, truths)])),
                   **_sharing(results),
                   max_consistency=max(r.consistency_error for r in results),
                   checked=min(args.check, args.ions), max_rel_diff_alone=worst,
                   **({"psnr_minus_alone_mean": float(np.mean(gaps)), "psnr_minus_alone_min": float(np.min(gaps))}
                      if gaps else {}))
    elif name == "prostate":
        from msifusion.workflows.benchmark import prostate_cases

        cases, _ = prostate_cases((4,), strongest=args.panel)
        guide, measured = cases[0].guide, np.stack([c.measured for c in cases])
        start = time.perf_counter()
        results = fuse_many(guide, measured, DEFAULT_METHOD, options)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        alone = [fuse(guide, m, DEFAULT_METHOD, options).image for m in measured]
        seconds_alone = time.perf_counter() - start
        gaps = [psnr(r.image, c.truth, c.mask) - psnr(a, c.truth, c.mask) for r, a, c in zip(results, alone, cases)]
        row.update(method=DEFAULT_METHOD, ions=len(cases), seconds=seconds, seconds_alone=seconds_alone,
                   **_sharing(results),
                   psnr_minus_alone_mean=float(np.mean(gaps)), psnr_minus_alone_min=float(np.min(gaps)))
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    row["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1e9
    import torch

    if torch.cuda.is_available() and args.device != "cpu":
        row["gpu"] = torch.cuda.get_device_name(0)
        row["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return row


def _task_list(text: str) -> list[str]:
    """An argparse type: comma-separated task names, each one of :data:`TASKS`."""
    names = comma_list(str)(text)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(map(repr, unknown))}: "
                                         f"expected {', '.join(TASKS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=_task_list, default="ginkgo,lcrn,large,many",
                        help=f"comma-separated, each run in its own process: {', '.join(TASKS)} (default: %(default)s)")
    parser.add_argument("--ions", type=at_least(1), default=100, help="ions of the many and panel tasks")
    parser.add_argument("--check", type=at_least(0), default=3, help="ions of the shared run also fused alone")
    parser.add_argument("--panel", type=at_least(1), default=30, help="prostate task: how many of the strongest peaks")
    parser.add_argument("--device", type=device_name, default="auto",
                        help="auto, cpu or cuda[:N] (default auto: CUDA where present)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one task in this process
    args = parser.parse_args()
    if "lcrn-bf16" in args.tasks and not args.one:
        from msifusion.runtime import resolve_device

        if resolve_device(args.device).type != "cuda":
            parser.error("--tasks: lcrn-bf16 needs a CUDA device (bfloat16 autocast is CUDA-only)")
    if args.one:
        import torch

        print(json.dumps({**task(args.one, args), "torch_threads": torch.get_num_threads()}))
        return
    print(header("msifusion speed"))
    rows = []
    for name in args.tasks:
        cmd = [sys.executable, __file__, "--one", name, "--ions", str(args.ions), "--check", str(args.check),
               "--panel", str(args.panel), "--device", args.device]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode:  # the child's own message, not a CalledProcessError that hides it
            how = (f"was killed by signal {-run.returncode} (out of memory?)" if run.returncode < 0 else
                   f"failed (exit {run.returncode})")
            sys.exit(f"task {name} {how}:\n{run.stderr.strip()[-3000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    times = {r["task"]: r["seconds"] for r in rows}
    if "ginkgo" in times and "lcrn" in times:
        print(f"lcrn / default wall-time ratio at ginkgo size: {times['lcrn'] / times['ginkgo']:.1f}×")


if __name__ == "__main__":
    main()
