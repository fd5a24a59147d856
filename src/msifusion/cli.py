"""Command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file and the problem),
1 anything unexpected. Heavy imports (torch) happen inside the commands, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from collections.abc import Callable, Sequence

from msifusion.errors import InputError
from msifusion.io.imzml import DEFAULT_TOLERANCE

EXIT_BAD_INPUT = 2
MASS_UNITS = ("ppm", "da", "mda")  # --tol's units: typed apart from the number, one is an unknown argument
LENGTH_UNITS = ("um", "µm", "μm", "nm", "mm")  # pixel sizes are plain numbers in µm (micro sign or Greek mu)
SPOT_UNITS = "σ is in pixels of the fused grid, not µm: a spot σ of s µm is s × scale / MSI pixel µm"
PIXEL_UNITS = "pixel sizes are plain numbers in µm: drop the unit"
DEVICE_HELP = "auto (CUDA when available; the default), cpu, cuda or cuda:N"
# the methods made exact under --spot-sigma (Method.uses_measurement, named here so that --help imports no torch;
# a test holds the two equal)
MEASURING_METHODS = ("guided-harmonic", "bilinear-bp", "guided-bp", "diffusion")
ION_HELP = "ion image: 2-D TIFF or NPY, or a CSV/TSV/text matrix or x, y table"
OVERWRITE_HELP = ("replace an earlier output folder (one whose run.json msifusion wrote, holding no file that run "
                  "did not write)")


class _Paragraphs(argparse.HelpFormatter):
    """argparse's help, but a description's blank lines part it into paragraphs, each wrapped to the terminal."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text  # bound here: a generator expression has no super() of its own
        return "\n\n".join(fill(part, width, indent) for part in text.split("\n\n"))


class _StoreOnce(argparse._StoreAction):
    """argparse's store, but a single-valued option given twice with different values is a usage error: argparse
    keeps the last, so ``fuse --ion a.tif --ion b.tif`` would fuse b.tif alone and say nothing."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = namespace.__dict__.setdefault("_values_given", {})
        if self.dest in given and given[self.dest] != values:
            parser.error(f"argument {'/'.join(self.option_strings)}: given twice ({given[self.dest]}, then "
                         f"{values}); it takes one value")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line, exit 2 and the prefix of every other bad input; a single-valued
    option is given once (:class:`_StoreOnce`); descriptions keep their paragraphs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Paragraphs)
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"msifusion: error: {message} (see `{self.prog} --help`)\n")


def _bounded(kind: type, low: float, high: float | None = None, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) ≥ ``low`` (> when ``strict``), ≤ ``high``.

    Every numeric option is checked here, so a bad value is a one-line usage error naming the
    option (exit 2), never a traceback from deep inside a library.
    """
    number = "{:g}" if kind is float else "{}"
    expected = f"{'an integer' if kind is int else 'a number'} {'>' if strict else '≥'} {number.format(low)}"
    expected += f" and ≤ {number.format(high)}" if high is not None else ""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (math.isfinite(value) and (value > low if strict else value >= low)
                                 and (high is None or value <= high)):
            finite = "a finite number" if value is not None and not math.isfinite(value) else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected.replace('a number', finite, 1)}, got {text!r}")
        return value + 0  # -0.0 → 0.0, as run.json records it

    return parse


_positive_int = _bounded(int, 1)
_count = _bounded(int, 0)
_scale = _bounded(int, 2)
_seed = _bounded(int, 0, 2**32 - 1)
_positive_float = _bounded(float, 0, strict=True)
_weight = _bounded(float, 0)


def _unit_hint(parse: Callable[[str], float], hint: str) -> Callable[[str], float]:
    """``parse``, whose error for a value with a length unit typed onto it (``10um``) adds ``hint``, as the unit
    typed apart (``10 um``) is answered."""

    def parse_with_hint(text: str) -> float:
        try:
            return parse(text)
        except argparse.ArgumentTypeError as exc:
            if text.strip().lower().endswith(LENGTH_UNITS):
                raise argparse.ArgumentTypeError(f"{exc}; {hint}") from None
            raise

    return parse_with_hint


_spot_sigma = _unit_hint(_weight, SPOT_UNITS)  # --spot-sigma: ≥ 0, in fused-grid pixels
_pixel_um = _unit_hint(_positive_float, PIXEL_UNITS)  # a pixel size in µm, > 0


def _normalize(text: str) -> str:
    """--normalize: tic, rms, or none (the raw sums, as when the option is not given). "none" stays a value here, so
    that ``--normalize none`` beside ``--ion`` is an option given, like ``--tol``; see `_normalization`."""
    value = text.strip().lower()
    if value not in ("tic", "rms", "none"):
        raise argparse.ArgumentTypeError(f"expected tic, rms or none, got {text!r}")
    return value


def _normalization(args: argparse.Namespace) -> str | None:
    """The library's normalisation for --normalize: None for raw sums."""
    return None if args.normalize in (None, "none") else args.normalize


def _mz(text: str) -> float | tuple[float, ...]:
    """An m/z (> 0), several in one quoted value (``--mz "$PANEL"``), or the m/z listed in a text file
    (:func:`msifusion.io.tables.read_mz_list`); flattened by :func:`_mzs`. ``--mz`` takes several values, so it
    swallows an imzML file given after it: say where it goes."""
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError as exc:
        if text.lower().endswith(".imzml"):
            raise argparse.ArgumentTypeError(f"{exc}; give the .imzML file before --mz") from None
        if Path(text).is_file():
            from msifusion.io.tables import read_mz_list

            try:
                return tuple(read_mz_list(Path(text)))
            except InputError as bad:
                raise argparse.ArgumentTypeError(str(bad)) from None
        if re.search(r"[/\\]|\.[A-Za-z]\w*$", text):  # a path (panel.tsv, lists/a.txt), not a number gone wrong
            missing = "a folder, not a file" if Path(text).is_dir() else "no such file"
            raise argparse.ArgumentTypeError(f"{text}: {missing} (--mz takes m/z values, or a file listing them)"
                                             ) from None
        if re.fullmatch(r"\s*\d+(\.\d*)?(\s*,\s*\d+(\.\d*)?)+\s*", text):
            raise argparse.ArgumentTypeError(f"{exc}: separate several m/z by spaces, not commas (--mz 500 1234), "
                                             "and write decimals with a point") from None
        if len(text.split()) > 1:
            return _flat([_mz(value) for value in text.split()])
        raise argparse.ArgumentTypeError(f"{exc} (or a file listing m/z)") from None


def _folder(text: str) -> str:
    """--out: a folder name; an empty one (``--out ""``, a shell variable that was not set) is refused as such rather
    than read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: name the output folder")
    return text


def _not_empty(text: str) -> str:
    """A file, folder or method name: an empty one (``--landmarks "$LM"`` with LM unset) is refused rather than read
    as the option left out (automatic registration in place of the user's landmarks, the default method)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: an unset shell variable? Give a value, or leave the option out")
    return text


def _mzs(args: argparse.Namespace) -> tuple[float, ...]:
    """``--mz`` as one tuple, files' lists in place."""
    return _flat(args.mz or ())


def _flat(values: Sequence[float | tuple[float, ...]]) -> tuple[float, ...]:
    """m/z values and lists of them (:func:`_mz`'s results) as one tuple, in order."""
    return tuple(m for given in values for m in (given if isinstance(given, tuple) else (given,)))


# ----------------------------------------------------------------------------- shared options


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--method", type=_not_empty, default=None,
                   help="fusion method (see `msifusion methods`; default guided-harmonic, the project's best)")
    g.add_argument("--seed", type=_seed, default=0, help="random seed; same seed, same output on CPU (default 0)")
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    g.add_argument("--quiet", action="store_true", help="no progress bars and no summary line (warnings still show)")
    s = p.add_argument_group(f"the measurement model ({', '.join(MEASURING_METHODS)})")
    measurement_only = [
        s.add_argument("--spot-sigma", type=_spot_sigma, default=0.0, metavar="PX",
                       help="σ of a Gaussian laser spot blurred before each MSI pixel's box average, in fused-grid "
                            "pixels (1 px = an MSI pixel / the scale; s µm is s × scale / MSI pixel µm), at most "
                            "scale / 2 (default 0: the box average alone); these methods are made exact under it")]
    m = p.add_argument_group("the default method, guided-harmonic")
    harmonic_only = [
        m.add_argument("--no-texture", action="store_true",
                       help="never carry the optical's fine texture (cell walls) over into the fused image; by "
                            "default a self-supervised test decides per ion"),
        m.add_argument("--no-spread", action="store_true",
                       help="never blur the fused image to an ion that proves less sharp than the optical below the "
                            "MSI pixel; by default a self-supervised test decides per ion"),
        m.add_argument("--no-plate", action="store_true",
                       help="never replace the fused image by the thin plate (the smoothest image with the measured "
                            "MSI pixels) for an ion that proves smoother than the optical's edges; by default a "
                            "self-supervised test decides per ion"),
        m.add_argument("--edge-weight", type=_weight, default=0.0, metavar="W",
                       help="add the paper's edge perceptual loss to the energy with this weight (default 0; "
                            "measured: slower and no closer to the truth, docs/benchmarks.md)")]
    t = p.add_argument_group("network training (fitted methods: lcrn; cnn3 and unet take some; defaults: the paper's)")
    training_only = [
        t.add_argument("--epochs", type=_positive_int, default=None,
                       help="epoch cap (default 2000; unet: 400, its most, and at least 3)"),
        t.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default 3e-4)"),
        t.add_argument("--w-mse", type=_weight, default=None, help="weight of the MSE loss (default 1)"),
        t.add_argument("--w-edge", type=_weight, default=None, help="weight of the edge perceptual loss (default 1)"),
        t.add_argument("--patience", type=_count, default=None,
                       help="stop after this many total increases of the edge loss; 0 = never (default 5)"),
        t.add_argument("--edge-kernel", choices=("laplacian", "sobel"), default=None,
                       help="the edge loss's kernel (default laplacian)"),
        t.add_argument("--checkpoint-every", type=_count, default=None, metavar="N",
                       help="save the output every N epochs under DIR/checkpoints (default 0: never)"),
        t.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA (ignored on the CPU)")]
    p.set_defaults(harmonic_only=harmonic_only, training_only=training_only, measurement_only=measurement_only)


def _add_ion_options(g, required: bool) -> list[argparse.Action]:
    return [
        g.add_argument("--mz", type=_mz, action="extend", nargs="+", required=required, metavar="M",
                       help="the m/z to extract, one or more (--mz 100 200, --mz repeated, or --mz \"100 200\"), "
                            "or a text file listing them (one per line, or the CSV/TSV column its header names m/z, "
                            "else the first; # lines are skipped, so `msifusion peaks` output saved to a file works "
                            "as it is)"),
        g.add_argument("--tol", default=None,
                       help=f"m/z window half-width, its unit attached: 5ppm, 0.01Da or 10mDa (default "
                            f"{DEFAULT_TOLERANCE}); each pixel's intensities within m/z ± tol are summed"),
        g.add_argument("--normalize", type=_normalize, default=None, metavar="{tic,rms,none}",
                       help="per pixel: the window sum ÷ the pixel's TIC or RMS × that norm's median over the "
                            "pixels; none (the default): the raw sums"),
    ]


def _add_pixel_size(group) -> None:
    group.add_argument("--pixel-size", type=_pixel_um, default=None, metavar="UM",
                       help="the MSI pixel size in µm, in place of what the ion file or imzML states (or leaves out)")


def _add_register_options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    g = p.add_argument_group("registration", "with --imzml, or in `register`; automatic without --landmarks")
    return [
        g.add_argument("--landmarks", type=_not_empty, metavar="L",
                       help="BigWarp landmarks, as Fiji's BigWarp saves them: CSV rows \"name\",\"true\","
                            "\"moving x\",\"moving y\",\"fixed x\",\"fixed y\" (moving = optical, fixed = ion, in "
                            "each image's calibrated units; inactive rows are not used, and written back to "
                            "landmarks.csv), or its JSON export"),
        g.add_argument("--transform", choices=("tps", "affine"), default=None,
                       help="landmark transform (default: the type a BigWarp JSON export names, else tps, as BigWarp)"),
        g.add_argument("--optical-pixel-size", type=_pixel_um, metavar="P",
                       help="optical pixel size in µm at full resolution (a pyramid's level is picked from it; "
                            "with --landmarks: in the landmarks' units); default: the file's calibration, else 1"),
        g.add_argument("--optical-scene", type=_positive_int, metavar="N",
                       help="a Zeiss CZI's scene, numbered from 1 as ZEN and Fiji's Bio-Formats series list show "
                            "them; needed where the slide holds several"),
        g.add_argument("--fixed-pixel-size", type=_pixel_um, metavar="P",
                       help="with --landmarks: pixel size of the fixed image as Fiji saw it "
                            "(default: ion µm / fixed-scale, else 1)"),
        g.add_argument("--fixed-scale", type=_positive_int, default=None, metavar="K",
                       help="with --landmarks: the fixed image in BigWarp was the ion image enlarged K times (default 1)"),
        g.add_argument("--deformable", action="store_true", help="automatic: add a B-spline step after the affine"),
    ]


def _given(args: argparse.Namespace, actions: list[argparse.Action]) -> list[str]:
    """The options among ``actions`` given with a value other than their default (so ``--spot-sigma 0``, the default
    box model, is not an option another method would ignore)."""
    return [a.option_strings[0] for a in actions if getattr(args, a.dest) != a.default]


_FIT_FIELD = {"epochs": "max_epochs"}  # training options whose FitConfig field has another name
_FIT_OPTION = {field: f"--{dest}" for dest, field in _FIT_FIELD.items()}


def _check_method_options(args: argparse.Namespace, training: bool = True) -> None:
    """Refuse options that the chosen method would ignore (training options for a solver, and the other way); without
    ``training``, only the guided-harmonic ones (the demo fits lcrn with the training options and measures through
    the spot whatever the method)."""
    from msifusion.methods import DEFAULT_METHOD, METHODS

    method = METHODS.get(args.method or DEFAULT_METHOD)
    if method is None:
        return  # an unknown method is refused, with the list, where the method is looked up
    training_only = args.training_only if training else []
    exact = f"the methods made exact under the measurement model ({', '.join(MEASURING_METHODS)})"
    for options, applies, to in ((training_only, method.trains, "fitted methods (lcrn, cnn3, unet)"),
                                 (args.harmonic_only, method.name == "guided-harmonic", "guided-harmonic"),
                                 (args.measurement_only if training else [], method.uses_measurement, exact)):
        misplaced = _given(args, options)
        if misplaced and not applies:
            raise InputError(", ".join(misplaced), f"applies only to {to}, not to --method {method.name}")
    given = _given(args, training_only)
    if method.name == "unet" and args.epochs is not None and args.epochs < 3:  # the demo fits it too
        raise InputError("--epochs", f"unet trains in three stages of at least one epoch each: give at least 3, not "
                                     f"{args.epochs}")
    fixed = [a.option_strings[0] for a in args.training_only  # a fitted method that sets this part of its recipe itself
             if a.option_strings[0] in given and _FIT_FIELD.get(a.dest, a.dest) not in (*method.fit_fields, "bf16")]
    if method.trains and fixed:
        taken = ", ".join([*(_FIT_OPTION.get(f, "--" + f.replace("_", "-")) for f in method.fit_fields), "--bf16"])
        raise InputError(", ".join(fixed), f"--method {method.name} does not use {'these' if len(fixed) > 1 else 'this'}; "
                                           f"its training takes {taken}")


def _settings(args: argparse.Namespace):
    from msifusion.fit import FitConfig
    from msifusion.runtime import Runtime
    from msifusion.methods import DEFAULT_METHOD, MethodOptions
    from msifusion.workflows.fusion import FuseSettings

    given = {"max_epochs": args.epochs, "lr": args.lr, "w_mse": args.w_mse, "w_edge": args.w_edge,
             "patience": args.patience, "edge_kernel": args.edge_kernel, "checkpoint_every": args.checkpoint_every}
    fit = FitConfig(**{k: v for k, v in given.items() if v is not None})  # an InputError naming the option
    from msifusion.harmonic import HarmonicConfig, PlateSettings, SpreadSettings, TextureSettings
    from msifusion.measurement import MeasurementModel

    harmonic = HarmonicConfig(texture=TextureSettings.off() if args.no_texture else TextureSettings(),
                              spread=SpreadSettings.off() if args.no_spread else SpreadSettings(),
                              plate=PlateSettings.off() if args.no_plate else PlateSettings(),
                              edge_weight=args.edge_weight)
    options = MethodOptions(fit=fit, runtime=Runtime(args.seed, args.device, args.quiet, args.bf16), harmonic=harmonic,
                            measurement=MeasurementModel(args.spot_sigma))
    return FuseSettings(args.method or DEFAULT_METHOD, options)


# ----------------------------------------------------------------------------- commands


def _register_settings(args: argparse.Namespace):
    from msifusion.register.optical import RegisterSettings

    given = {"transform": args.transform, "optical_pixel_size": args.optical_pixel_size,
             "optical_scene": args.optical_scene,
             "fixed_pixel_size": args.fixed_pixel_size, "fixed_scale": args.fixed_scale}
    return RegisterSettings(args.scale, Path(args.landmarks) if args.landmarks else None,
                            deformable=args.deformable, **{k: v for k, v in given.items() if v is not None})


def cmd_fuse(args: argparse.Namespace) -> int:
    from msifusion.workflows.fusion import FuseFilesRequest, fuse_files

    if args.optical is None:
        raise InputError("fuse", "give --optical")
    _check_method_options(args)
    if args.imzml:
        if args.ion:
            raise InputError("fuse", "give either --ion or --imzml, not both")
        if args.fill_zero_lines:
            raise InputError("--fill-zero-lines", "only with --ion: an imzML says which pixels have a spectrum, and "
                                                  "fuse --imzml fills those without one")
        return _fuse_imzml(args)
    if args.ion is None:
        raise InputError("fuse", "give --ion (a registered ion image) or --imzml with --mz")
    misplaced = _given(args, args.imzml_only)
    if misplaced:
        raise InputError(", ".join(misplaced), "only with --imzml (imzML extraction and registration); with --ion "
                                               "the optical must already be registered to the ion image")
    request = FuseFilesRequest(Path(args.optical), Path(args.ion), Path(args.out), _settings(args),
                               args.scale, args.pixel_size, args.overwrite, args.fill_zero_lines)
    record = fuse_files(request)
    _warn(record)
    fitted = f"{record['epochs']} epochs ({record['stop_reason']})" if record["fit_settings"] else record["stop_reason"]
    _say(args, f"{record['method']} ×{record['scale']}: {fitted}, {record['timings_s']['total']:.1f} s, consistency "
               f"error {record['consistency_error']:.2e}")
    print(Path(args.out) / "fused.tiff")
    return 0


def _fuse_imzml(args: argparse.Namespace) -> int:
    from msifusion.workflows.from_imzml import ImzmlFuseRequest, fuse_imzml

    mzs = _mzs(args)
    if not mzs:
        raise InputError("--mz", "give at least one m/z with --imzml")
    told: list[str] = []

    def tell(warning: str) -> None:  # the registration's warnings, before minutes of fusion
        told.append(warning)
        _say_warning(warning)

    request = ImzmlFuseRequest(Path(args.imzml), mzs, args.tol or DEFAULT_TOLERANCE, Path(args.optical),
                               Path(args.out), _register_settings(args), _settings(args), _normalization(args),
                               args.overwrite, on_warning=tell, pixel_size_um=args.pixel_size)
    record = fuse_imzml(request)
    _warn(record, told)
    _say(args, _registered(record["registration"]))
    from msifusion.methods import PLATE_LABEL, SMOOTHEST_LABEL, SMOOTHEST_WHY, SPREAD_LABEL

    ions = list(record.get("ions", {"": record}).values())
    details = [ion.get("method_details") or {} for ion in ions]
    plate = sum(bool(d.get("plate_px")) for d in details)
    smooth = sum(bool(d.get("kept_smoothest")) and not d.get("plate_px") for d in details)
    spread = sum(bool(d.get("spread_px")) for d in details)
    _say(args, f"{len(mzs)} ion(s) fused ×{args.scale} in {record['timings_s']['total']:.1f} s, consistency error "
               f"≤ {max(ion['consistency_error'] for ion in ions):.2e}"
               + (f"; {smooth} of {len(ions)} at {SMOOTHEST_LABEL} ({SMOOTHEST_WHY} them: see run.json)"
                  if smooth else "")
               + (f"; {spread} of {len(ions)} {SPREAD_LABEL} (spread_px in run.json)" if spread else "")
               + (f"; {plate} of {len(ions)} {PLATE_LABEL} (plate_px in run.json)" if plate else ""))
    print(Path(args.out) / ("fused.tiff" if len(mzs) == 1 else "fused.ome.tiff"))
    return 0


def cmd_ions(args: argparse.Namespace) -> int:
    from msifusion.workflows.ions import IonsRequest, extract_ions

    record = extract_ions(IonsRequest(Path(args.imzml), _mzs(args), args.tol or DEFAULT_TOLERANCE, Path(args.out),
                                      _normalization(args), args.overwrite, args.quiet, args.pixel_size))
    _warn(record)
    for name in record["outputs"]:
        print(Path(args.out) / name)
    return 0


def cmd_peaks(args: argparse.Namespace) -> int:
    from msifusion.runtime import elapsed_bar
    from msifusion.io.imzml import ImzML

    with ImzML(Path(args.imzml)) as f:
        with elapsed_bar(f"mean spectrum of {f.path.name}", args.quiet):
            peaks = f.strongest_peaks(args.n)
        pixel = (f"{f.pixel_size_um:g} µm" if f.pixel_size_um else
                 f"not used ({f.pixel_size_note})" if f.pixel_size_note else "unknown")
        print(f"# {f.path.name}: {f.shape[0]}×{f.shape[1]} px, pixel size {pixel}, "
              f"m/z {f.mz_range[0]:.4f}–{f.mz_range[1]:.4f}")
        for warning in f.warnings:
            _say_warning(warning)
    print("m/z\tmean_intensity")
    for mz, intensity in peaks:
        print(f"{mz:.4f}\t{intensity:.6g}")
    if len(peaks) < args.n:
        print(f"msifusion: {f.path.name} has {len(peaks)} peaks, fewer than the {args.n} asked for", file=sys.stderr)
    return 0


def _registered(info: dict) -> str:
    """The summary line of a registration: its method and how good it is (the automatic search's scores, or the
    landmarks' errors)."""
    names = {"score": "score", "correlation": "correlation", "nmi": "NMI"}
    quality = ", ".join(f"{names[k]} {v:.3g}" for k, v in info.items() if k in names and isinstance(v, (int, float)))
    errors = info.get("landmark_errors")
    if errors and errors["largest"]["ion_px"] < 0.005:  # fed back from a run, whose landmarks sample its transform
        quality = (f"{errors['measure']} error 0.00 ion pixels at every landmark: they lie on one transform, as a "
                   "run's own landmarks.csv does, so this says nothing of its accuracy")
    elif errors:
        largest = errors["largest"]
        quality = (f"{errors['measure']} error median {errors['median']['ion_px']:.2f}, largest "
                   f"{largest['ion_px']:.2f} ion pixels ({largest['landmark']})")
    return f"registered ({info['method']}){': ' + quality if quality else ''}"


def cmd_register(args: argparse.Namespace) -> int:
    from msifusion.workflows.from_imzml import RegisterRequest, register_files

    record = register_files(RegisterRequest(Path(args.optical), Path(args.ion), Path(args.out),
                                            _register_settings(args), args.overwrite, args.quiet,
                                            args.pixel_size))
    _warn(record)
    _say(args, _registered(record["registration"]))
    print(Path(args.out) / "optical_registered.tiff")
    return 0


def cmd_example(args: argparse.Namespace) -> int:
    from msifusion.examples import ExampleDataError, fetch_prostate

    try:
        folder = fetch_prostate(Path(args.cache) if args.cache else None,
                                announce=None if args.quiet else lambda text: print(text, file=sys.stderr, flush=True))
    except ExampleDataError as exc:
        raise InputError("example prostate", str(exc)) from None
    print(folder)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from msifusion.workflows.demo import DemoRequest, run_demo

    _check_method_options(args, training=False)
    record = run_demo(DemoRequest(Path(args.out), _settings(args), args.scale, args.overwrite))
    _warn(record)
    for name, fit in record["training"].items():
        _say(args, f"{name}: {fit['epochs']} epochs ({fit['stop_reason']})")
    width = max(map(len, record["scores"]))
    for name, scores in record["scores"].items():
        print(f"{name:>{width}}: PSNR {scores['psnr']:.2f} dB  SSIM {scores['ssim']:.4f}  "
              f"consistency {scores['consistency']:.2e}")
    print(Path(args.out) / "panel.png")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from msifusion.methods import DEFAULT_METHOD, METHODS

    import shutil
    import textwrap

    width = max(map(len, METHODS))
    indent = " " * (width + 4)
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else None  # a pipe gets whole lines
    for name in sorted(METHODS):
        mark = "*" if name == DEFAULT_METHOD else " "
        row = f"{mark} {name:<{width}}  {METHODS[name].summary}"
        print(textwrap.fill(row, columns, subsequent_indent=indent) if columns else row)
    print("(* = default)")
    return 0


def _comma_list(what: str, item: Callable[[str], object] = str) -> Callable[[str], tuple]:
    """An argparse type: ``a,b`` → ``(item("a"), item("b"))``; malformed, a usage error that names ``what``.

    An empty list or item (``""``, ``,``, ``a,,b``) is refused: read as "nothing given" it would run the defaults
    (every method, say) instead of what the user meant to type.
    """
    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",")]
        try:
            if all(parts):
                return tuple(item(part) for part in parts)
        except (argparse.ArgumentTypeError, ValueError):
            pass
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {text!r}")

    return parse


_method_list = _comma_list("method names")
_group_list = _comma_list("group names")
_seed_list = _comma_list("seeds (integers ≥ 0)", _seed)


def _unique(values: list | None) -> tuple | None:
    """A repeated comma-list option's values in order, each once (None when the option was not given)."""
    return None if values is None else tuple(dict.fromkeys(values))


def cmd_benchmark(args: argparse.Namespace) -> int:
    from msifusion.runtime import Runtime
    from msifusion.workflows.benchmark import BenchmarkConfig, BenchmarkRequest, run_benchmark

    config = BenchmarkConfig.preset(
        args.quick, methods=_unique(args.methods), groups=_unique(args.groups), phantom_seeds=_unique(args.seeds),
        epoch_cap=args.epochs, prostate_dir=Path(args.prostate_dir) if args.prostate_dir else None,
        runtime=Runtime(args.seed, args.device, args.quiet), panels=not args.no_panels)
    rows = run_benchmark(BenchmarkRequest(Path(args.out), config, args.overwrite))
    _say(args, f"{len(rows)} results ({len({r['case'] for r in rows})} cases × {len({r['method'] for r in rows})} methods)")
    print(Path(args.out) / "results.md")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from msifusion.fit import FitConfig
    from msifusion.runtime import Runtime
    from msifusion.workflows.study import StudyConfig, StudyRequest, run_study, summary_line

    files = args.optical is not None or args.ion is not None
    misplaced = _given(args, args.phantom_only if files else args.files_only)
    if misplaced:
        raise InputError(", ".join(misplaced), "only for the synthetic phantom (study without --optical and --ion)"
                         if files else "only with --optical and --ion; the synthetic phantom brings its own truth "
                                       "and pixel size")
    recipe = {"lr": args.lr, "w_mse": args.w_mse, "w_edge": args.w_edge, "patience": args.patience,
              "edge_kernel": args.edge_kernel}  # the paper's, FitConfig's defaults, where not given
    fit = FitConfig(max_epochs=args.epochs, checkpoint_every=args.checkpoint_every,
                    **{k: v for k, v in recipe.items() if v is not None})
    given = {"seed": args.phantom_seed, "kind": args.phantom_kind, "ion": args.phantom_ion}  # each checked by argparse
    phantom = replace(StudyConfig.phantom, **{k: v for k, v in given.items() if v is not None})
    config = StudyConfig(
        optical=Path(args.optical) if args.optical else None, ion=Path(args.ion) if args.ion else None,
        truth=Path(args.truth) if args.truth else None, scale=args.scale, ion_pixel_size_um=args.pixel_size,
        phantom=phantom, fit=fit, strip=args.strip,
        runtime=Runtime(args.seed, args.device, args.quiet))
    record = run_study(StudyRequest(Path(args.out), config, args.overwrite))
    _warn(record)
    _say(args, summary_line(record))
    print(Path(args.out) / "study.png")
    return 0


def _add_benchmark_and_study(sub) -> None:
    """The two commands that score methods against a known truth, added to :func:`build_parser`'s subcommands."""
    from msifusion.workflows.benchmark import GROUPS

    p = sub.add_parser("benchmark", help="score every method against known truth (phantom, Middlebury, prostate)",
                       description="Fuse block-averaged truths (synthetic phantoms ×10/×20, Middlebury 2014 "
                                   "Motorcycle ×8/×16, the MSIght prostate MSI ×4/×8) with every method and score "
                                   "them. Writes DIR/results.csv, results.md, panels/<case>.png and run.json.")
    p.add_argument("--out", type=_folder, default="msifusion-benchmark", metavar="DIR",
                   help="output folder (default ./msifusion-benchmark)")
    p.add_argument("--quick", action="store_true",
                   help="about a minute on 2 CPU cores: one small phantom (seed 1, ×10), Middlebury halved and fused "
                        "×8, no prostate, trained methods capped at 30 epochs (the full run: hours with the trained "
                        "methods; minutes with --methods of the untrained ones)")
    # Comma lists; a repeated option adds to the list (as --mz does), so `--methods a --methods b` runs both.
    p.add_argument("--methods", type=_method_list, action="extend", default=None, metavar="A,B,…",
                   help="methods to run, comma-separated or the option repeated "
                        "(default: all, the default method first)")
    p.add_argument("--groups", type=_group_list, action="extend", default=None, metavar="G,…",
                   help=f"case groups: {', '.join(GROUPS)} (default: all; --quick: phantom,middlebury)")
    p.add_argument("--seeds", type=_seed_list, action="extend", default=None, metavar="N,…",
                   help="phantom seeds (default 1,2; --quick: 1)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epoch cap of the trained methods (default: their own recipe; --quick: 30)")
    p.add_argument("--prostate-dir", type=_not_empty, default=None, metavar="DIR",
                   help="folder with prostate_example.imzML/.ibd and prostate_he_example.tif "
                        "(default: fetched once from PyPI's msight wheel and cached)")
    p.add_argument("--no-panels", action="store_true", help="skip panels/<case>.png")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every method (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("study", help="LCRN training study (the paper's Figure 4): where does the edge-loss rule stop?",
                       description="Fit LCRN without early stopping up to --epochs, score every checkpoint (MSE to "
                                   "the interpolated ion, PSNR/SSIM vs the truth when known, edge perceptual loss, "
                                   "consistency) and mark where the edge-loss rule would have stopped. Without "
                                   "--optical/--ion: the synthetic phantom (truth known). Writes DIR/study.csv, "
                                   "study.png, checkpoints.png, checkpoints/epoch_NNNN.tiff and run.json.")
    p.add_argument("--out", type=_folder, default="msifusion-study", metavar="DIR",
                   help="output folder (default ./msifusion-study)")
    io = p.add_argument_group("inputs (default: the synthetic phantom)")
    io.add_argument("--optical", type=_not_empty, metavar="OPT", help="microscope image registered to the ion grid")
    io.add_argument("--ion", type=_not_empty, metavar="ION", help=ION_HELP)
    # Defaults None below, so that an option given where it does not apply is refused, not dropped.
    truth = io.add_argument("--truth", type=_not_empty, metavar="TRUTH",
                            help="high-resolution truth on the optical's grid (2-D TIFF/NPY/CSV)")
    io.add_argument("--scale", type=_scale, default=None, help="magnification (phantom default 10)")
    files_only = [truth, io.add_argument("--pixel-size", type=_pixel_um, default=None, metavar="UM",
                                         help="with --ion: ion pixel size in µm")]
    phantom_only = [
        io.add_argument("--phantom-kind", choices=("leaf", "stem"), default=None, help="phantom kind (default leaf)"),
        io.add_argument("--phantom-ion", choices=("apigenin", "pheophytin", "sucrose", "gradient"), default=None,
                        help="phantom ion (default apigenin)"),
        io.add_argument("--phantom-seed", type=_seed, default=None, help="phantom seed (default 1)")]
    t = p.add_argument_group("training (the paper's recipe; the run never stops early)")
    t.add_argument("--epochs", type=_positive_int, default=300, help="epochs to run (default 300)")
    t.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (default 3e-4)")
    t.add_argument("--w-mse", type=_weight, default=None, help="weight of the MSE loss (default 1)")
    t.add_argument("--w-edge", type=_weight, default=None, help="weight of the edge perceptual loss (default 1)")
    t.add_argument("--patience", type=_count, default=None,
                   help="the stopping rule marked: N total edge-loss increases (default 5)")
    t.add_argument("--edge-kernel", choices=("laplacian", "sobel"), default=None,
                   help="the edge loss's kernel (default laplacian)")
    t.add_argument("--checkpoint-every", type=_positive_int, default=1, metavar="N", help="score every N epochs (default 1)")
    t.add_argument("--strip", type=_positive_int, default=8, help="checkpoints shown in checkpoints.png (default 8)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_study, files_only=files_only, phantom_only=phantom_only)


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr)


def _warn(record: dict, told: Sequence[str] = ()) -> None:
    """A run's warnings (also in its run.json), one line each on stderr, even with --quiet; those in ``told`` (said
    while the run went on) are not repeated."""
    for warning in record.get("warnings", []):
        if warning not in told:
            _say_warning(warning)


def _say_warning(warning: str) -> None:
    print(f"msifusion: warning: {warning}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from msifusion import __version__

    parser = _Parser(prog="msifusion", description="Super-resolution fusion of MSI ion images with microscopy.")
    parser.add_argument("--version", action="version", version=f"msifusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("fuse", help="fuse an ion image with a registered microscope image",
                       description="Fuse an ion image (--ion) with a microscope image registered to the ion grid, "
                                   "or ions of an imzML file (--imzml) with a microscope image registered here.\n\n"
                                   "With --ion, DIR gets fused.tiff (float32, in the ion image's units), fused.png, "
                                   "compare.png (optical | measured | fused) and run.json; for fitted methods also "
                                   "losses.csv and losses.png, and with --checkpoint-every "
                                   "checkpoints/epoch_NNNN.tiff and .png.\n\n"
                                   "With --imzml, DIR first gets the registration: optical_registered.tiff and .png, "
                                   "overlay.png and landmarks.csv (an ambiguous automatic registration also "
                                   "overlay_rival.png, alignments.png and landmarks_rival.csv). One --mz then writes "
                                   "ion.tiff and the fusion outputs above into DIR; several write DIR/mz_<m/z>/ per "
                                   "ion (its ion.tiff, fused.tiff, fused.png and run.json) and, for the panel, "
                                   "fused.ome.tiff, ions.ome.tiff (the measured ions), ions.png, fused.png and "
                                   "run.json; where some pixels have no spectrum, acquired.tiff marks those that do.")
    io = p.add_argument_group("inputs")
    io.add_argument("--optical", type=_not_empty, metavar="OPT",
                    help="microscope image (PNG/JPEG/TIFF/SVS/NDPI/CZI), required: with --ion registered to it (ion "
                         "shape × scale); with --imzml any size (registered here)")
    io.add_argument("--ion", type=_not_empty, metavar="ION", help=ION_HELP)
    io.add_argument("--scale", type=_scale, default=None,
                    help="magnification of the fused grid: with --ion inferred from the shapes, or the optical resized "
                         "to ion × N; required with --imzml")
    _add_pixel_size(io)
    io.add_argument("--fill-zero-lines", action="store_true",
                    help="with --ion and no acquired.tiff beside it: take whole rows or columns of zeros between "
                         "non-zero ones (a raster's skipped lines) for pixels without a spectrum, and fill them from "
                         "their neighbours before fusion")
    io.add_argument("--out", type=_folder, required=True, metavar="DIR", help="output folder")
    inst = p.add_argument_group("from an imzML file (instead of --ion)",
                                "registers the optical, then fuses each m/z")
    inst.add_argument("--imzml", type=_not_empty, metavar="F", help="imzML file (its .ibd beside it)")
    imzml_only = _add_ion_options(inst, required=False) + _add_register_options(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_fuse, imzml_only=imzml_only)

    p = sub.add_parser("ions", help="export ion images from an imzML file",
                       description="Ion images for many m/z in one pass: DIR/mz_<m/z>.tiff per ion (float32, "
                                   "row = y, column = x), DIR/ions.ome.tiff (calibrated stack), DIR/ions.png and "
                                   "DIR/run.json; where some pixels have no spectrum, DIR/acquired.tiff (1 where one "
                                   "was acquired).")
    p.add_argument("imzml", type=_not_empty, metavar="F.imzML", help="imzML file (its .ibd beside it)")
    _add_ion_options(p, required=True)
    _add_pixel_size(p)
    p.add_argument("--out", type=_folder, required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_ions)

    p = sub.add_parser("peaks", help="list the strongest m/z of the mean spectrum",
                       description="Print the strongest peaks of the mean spectrum as a table (a # line naming the "
                                   "file, then m/z and mean intensity, tab-separated) on stdout; a peak's mean "
                                   "intensity is its ion image's mean over the spectra at the default ±5 ppm "
                                   "window, as `ions` gives it; "
                                   "peaks within 10 ppm of a stronger one count as one. Saved to a file, it is a list "
                                   "for --mz.")
    p.add_argument("imzml", type=_not_empty, metavar="F.imzML", help="imzML file (its .ibd beside it)")
    p.add_argument("-n", type=_positive_int, default=20, help="how many peaks (default 20)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_peaks)

    p = sub.add_parser("register", help="register a microscope image onto the ion grid × scale",
                       description="Landmark (BigWarp CSV/JSON) or automatic registration. Writes "
                                   "DIR/optical_registered.tiff / .png, overlay.png (check it), landmarks.csv "
                                   "(BigWarp) and run.json; an ambiguous automatic registration also writes the other "
                                   "alignment as overlay_rival.png and landmarks_rival.csv, and alignments.png: "
                                   "the optical's outline under each, on the MSI tissue image.")
    p.add_argument("--optical", type=_not_empty, required=True, metavar="OPT",
                   help="microscope image (PNG/JPEG/TIFF/SVS/NDPI/CZI), any size")
    p.add_argument("--ion", type=_not_empty, required=True, metavar="ION_OR_IMZML",
                   help="an ion image or an .imzML file")
    p.add_argument("--scale", type=_scale, required=True, help="magnification of the registered output")
    _add_pixel_size(p)
    p.add_argument("--out", type=_folder, required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_register_options(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("example", help="fetch real example data (prints its folder)",
                       description="Fetch a real example dataset once (from PyPI) into a cache and print its folder.")
    p.add_argument("name", choices=("prostate",), help="prostate: MALDI-TOF imzML + H&E (MSIght, MIT)")
    p.add_argument("--cache", type=_not_empty, metavar="DIR",
                   help="cache folder (default $MSIFUSION_CACHE/examples/<name> where that variable is set, else "
                        "~/.cache/msifusion/examples/<name>)")
    p.add_argument("--quiet", action="store_true", help="say nothing before a download")
    p.set_defaults(func=cmd_example)

    p = sub.add_parser("demo", help="run the embedded synthetic leaf demo (truth known)",
                       description="Fuse a synthetic ginkgo-like leaf cross-section at ×10 (or ×20) with --method, "
                                   "bilinear and lcrn, and compare each with its truth. Writes the inputs "
                                   "(DIR/optical.png, optical.tiff, ion.tiff, truth.tiff), the --method's "
                                   "fused.tiff, fused.png (losses.csv / losses.png for a fitted one), panel.png, "
                                   "run.json, and with --checkpoint-every checkpoints/<method>/epoch_NNNN.tiff / .png "
                                   "per fitted method.")
    p.add_argument("--out", type=_folder, default="msifusion-demo", metavar="DIR",
                   help="output folder (default ./msifusion-demo)")
    p.add_argument("--scale", type=int, default=10, choices=(10, 20), help="magnification (default 10)")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    _add_benchmark_and_study(sub)

    p = sub.add_parser("methods", help="list the fusion methods",
                       description="List the fusion methods --method takes, each with a one-line summary.")
    p.set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    argv = _attach_signed_values(sys.argv[1:] if argv is None else argv)
    for token in argv:
        if any("\udc80" <= ch <= "\udcff" for ch in token):  # bytes that are not UTF-8, as Python keeps them
            shown = token.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            parser.exit(EXIT_BAD_INPUT, f"msifusion: error: {shown}: its name holds bytes that are not UTF-8 text "
                                        "(shown as �), which the image and TIFF libraries cannot take; rename it\n")
    args, extra = parser.parse_known_args(argv)
    vars(args).pop("_values_given", None)  # _StoreOnce's record, not an option
    if extra:
        words = {token.lower() for token in extra}
        after_spot = hasattr(args, "spot_sigma") and any(  # --spot-sigma 2 um, --spot-sigma=2 um, --spot 2 um
            any(prev.startswith("--spot") for prev in argv[max(0, i - 2):i])
            for i, token in enumerate(argv) if token.lower() in LENGTH_UNITS)
        units = ("; a tolerance's unit goes right after its number, without a space (e.g. --tol 5ppm)"
                 if words & set(MASS_UNITS) else f"; {SPOT_UNITS}" if after_spot else
                 f"; {PIXEL_UNITS}" if words & set(LENGTH_UNITS) else "")
        parser.exit(EXIT_BAD_INPUT, f"msifusion: error: unrecognized arguments: {' '.join(extra)}{units} "
                                    f"(see `msifusion {args.command} --help`)\n")
    stopped: list[int] = []

    def stop(signum: int, _frame) -> None:
        stopped.append(signum)  # told by its signal, whatever the exception becomes on its way out (see _failed)
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(143)

    in_main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        return args.func(args)
    except BaseException as exc:  # noqa: BLE001 - each kind is told or re-raised in _failed
        return _failed(exc, stopped, getattr(args, "out", None))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _failed(exc: BaseException, stopped: list[int], out: str | None) -> int:
    """The exit code of a command that raised ``exc``, after its one line on stderr; a bug is raised again.

    Ctrl-C and a kill (SIGTERM) raise KeyboardInterrupt and SystemExit, so staging folders are removed as on any
    error; one that cuts a library's import short can surface as another error from the half-imported module, so
    the signal, not the exception, says what happened."""
    import signal

    if stopped or isinstance(exc, KeyboardInterrupt):
        killed = bool(stopped) and stopped[0] == signal.SIGTERM
        print(f"msifusion: {'terminated' if killed else 'interrupted'}; nothing written", file=sys.stderr)
        return 143 if killed else 130
    if isinstance(exc, InputError):
        print(f"msifusion: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(exc, BrokenPipeError):  # `msifusion peaks F | head`: the reader has what it wanted; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(exc, OSError):  # a full disk, a quota, a drive gone: not the input's fault (exit 1)
        print(f"msifusion: error: {_os_error(exc, out)}; nothing written", file=sys.stderr)
        return 1
    if _out_of_memory(exc):  # past the up-front checks' lower bounds (another program took memory meanwhile)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"msifusion: error: out of memory ({detail[:200]}); nothing written: use a smaller --scale or crop the "
              "images (the fitted methods need about 30 times the default's memory)", file=sys.stderr)
        return 1
    raise exc


def _out_of_memory(exc: BaseException) -> bool:
    """NumPy's MemoryError, torch's CUDA OutOfMemoryError, or torch's CPU allocator failing (a RuntimeError); known by
    name, so that torch is not imported for it."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)))


def _attach_signed_values(argv: list[str]) -> list[str]:
    """``--tol -5ppm`` → ``--tol=-5ppm``: argparse takes a dash-led value that is not a bare number for an option, so
    the user would read "expected one argument" instead of what is wrong with the value."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--tol" and re.match(r"-[0-9.]", token):
            out[-1] = f"--tol={token}"
        else:
            out.append(token)
    return out


def _os_error(exc: OSError, out: str | None) -> str:
    """An operating-system error in one line, naming the file, else the output folder being written."""
    where = f"{exc.filename}: " if exc.filename else f"writing into {out}: " if out else ""
    what = exc.strerror or str(exc)
    if "requested" in what and "written" in what:  # numpy's and tifffile's short write, which names no cause
        what += " (a short write: is the disk full?)"
    return where + what


if __name__ == "__main__":
    sys.exit(main())
