"""Command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file and the problem),
1 anything unexpected. Heavy imports (torch) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from msifusion.errors import InputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


# ----------------------------------------------------------------------------- shared options


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--method", default=None, help="fusion method (see `msifusion methods`); default: the project's best")
    g.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output on CPU (default 0)")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    t = p.add_argument_group("network training (lcrn and other fitted methods; defaults are the paper's)")
    t.add_argument("--epochs", type=_positive_int, default=2000, help="epoch cap (default 2000)")
    t.add_argument("--lr", type=_positive_float, default=3e-4, help="Adam learning rate (default 3e-4)")
    t.add_argument("--w-mse", type=float, default=1.0, help="weight of the MSE loss (default 1)")
    t.add_argument("--w-edge", type=float, default=1.0, help="weight of the edge perceptual loss (default 1)")
    t.add_argument("--patience", type=int, default=5,
                   help="stop after this many total increases of the edge loss; 0 = never (default 5)")
    t.add_argument("--edge-kernel", choices=("laplacian", "sobel"), default="laplacian")
    t.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="save the output every N epochs under DIR/checkpoints (default: never)")


def _settings(args: argparse.Namespace):
    from msifusion.fit import FitConfig, Runtime
    from msifusion.methods import DEFAULT_METHOD
    from msifusion.pipeline import FuseSettings

    try:
        fit = FitConfig(max_epochs=args.epochs, lr=args.lr, w_mse=args.w_mse, w_edge=args.w_edge,
                        patience=args.patience, edge_kernel=args.edge_kernel, checkpoint_every=args.checkpoint_every)
    except ValueError as exc:
        raise InputError("training options", str(exc)) from None
    try:
        from msifusion.fit import resolve_device

        resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise InputError("--device", str(exc)) from None
    return FuseSettings(args.method or DEFAULT_METHOD, fit, Runtime(args.seed, args.device, args.quiet))


# ----------------------------------------------------------------------------- commands


def cmd_fuse(args: argparse.Namespace) -> int:
    from msifusion.pipeline import FuseFilesRequest, fuse_files

    if args.optical is None or args.ion is None:
        raise InputError("fuse", "give --optical and --ion")
    request = FuseFilesRequest(Path(args.optical), Path(args.ion), Path(args.out), _settings(args),
                               args.scale, args.pixel_size, args.overwrite)
    record = fuse_files(request)
    _say(args, f"{record['method']} ×{record['scale']}: {record['epochs']} epochs ({record['stop_reason']}), "
               f"{record['timings_s']['total']:.1f} s, consistency error {record['consistency_error']:.2e}")
    print(Path(args.out) / "fused.tiff")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from msifusion.demo import DemoRequest, run_demo

    record = run_demo(DemoRequest(Path(args.out), _settings(args), args.scale, args.overwrite))
    for name, scores in record["scores"].items():
        print(f"{name:>10}: PSNR {scores['psnr']:.2f} dB  SSIM {scores['ssim']:.4f}  "
              f"consistency {scores['consistency']:.2e}")
    print(Path(args.out) / "panel.png")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from msifusion.methods import DEFAULT_METHOD, METHODS

    for name in sorted(METHODS):
        mark = "*" if name == DEFAULT_METHOD else " "
        print(f"{mark} {name:<12} {METHODS[name].summary}")
    print("(* = default)")
    return 0


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from msifusion import __version__

    parser = _Parser(prog="msifusion", description="Super-resolution fusion of MSI ion images with microscopy.")
    parser.add_argument("--version", action="version", version=f"msifusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fuse", help="fuse an ion image with a registered microscope image",
                       description="Fuse an ion image with a microscope image registered to the ion grid. "
                                   "Writes DIR/fused.tiff (float32, ion units), fused.png, run.json, and for "
                                   "fitted methods losses.csv / losses.png.")
    io = p.add_argument_group("inputs")
    io.add_argument("--optical", metavar="OPT", help="microscope image (PNG/JPEG/TIFF), shape = ion shape × scale")
    io.add_argument("--ion", metavar="ION", help="ion image: 2-D TIFF, NPY or CSV")
    io.add_argument("--scale", type=int, default=None, help="magnification; resizes the optical to ion × N if needed")
    io.add_argument("--pixel-size", type=_positive_float, default=None, metavar="UM",
                    help="ion pixel size in µm (overrides the file's calibration)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _add_run_options(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("demo", help="run the embedded synthetic leaf demo (truth known)",
                       description="Fuse a synthetic ginkgo-like leaf cross-section at ×10 and compare with its truth.")
    p.add_argument("--out", default="msifusion-demo", metavar="DIR", help="output folder (default ./msifusion-demo)")
    p.add_argument("--scale", type=int, default=10, choices=(10, 20), help="magnification (default 10)")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("methods", help="list the fusion methods")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"msifusion: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("msifusion: interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
