import numpy as np
import pytest

from msifusion.errors import InputError
from msifusion.fit import FitConfig
from msifusion.runtime import Runtime
from msifusion.harmonic import HarmonicConfig
from msifusion.methods import DEFAULT_METHOD, METHODS, FusionResult, MethodOptions, fuse, fuse_many, infer_scale

QUICK = MethodOptions(FitConfig(max_epochs=5, patience=0), Runtime(seed=0, quiet=True))


def test_infer_scale():
    assert infer_scale((40, 60), (4, 6)) == 10
    for guide, ion in (((40, 61), (4, 6)), ((40, 60), (4, 7))):
        with pytest.raises(ValueError, match="not an integer multiple"):
            infer_scale(guide, ion)
    with pytest.raises(ValueError, match=r"^optical shape 30×60 is ×10 the ion's height and ×20 its width \(3×3\); the "
                                         "two factors must be equal$"):
        infer_scale((30, 60), (3, 3))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_shape_and_units(small_pair, method):
    guide, ion, scale = small_pair
    base = fuse(guide, ion, method, QUICK)
    big = fuse(guide, ion * 1000.0, method, QUICK)
    assert base.image.shape == guide.shape[:2] and base.image.dtype == np.float32
    assert np.all(np.isfinite(base.image))
    np.testing.assert_allclose(big.image, base.image * 1000.0, rtol=1e-4, atol=1e-3 * float(np.abs(base.image).max()))
    assert base.scale == scale and base.intensity_scale == pytest.approx(float(ion.max()))


def test_lcrn_is_reproducible_for_a_seed(small_pair):
    guide, ion, _ = small_pair
    a = fuse(guide, ion, "lcrn", QUICK).image
    b = fuse(guide, ion, "lcrn", QUICK).image
    c = fuse(guide, ion, "lcrn", MethodOptions(QUICK.fit, Runtime(seed=1, quiet=True))).image
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bilinear_consistency_is_reported(small_pair):
    from msifusion.measurement import consistency_error, upsample

    guide, ion, scale = small_pair
    result = fuse(guide, ion, "bilinear")
    expected = consistency_error(upsample(np.asarray(ion, np.float32), scale), ion, scale)
    assert expected > 0.01 and result.consistency_error == pytest.approx(expected, rel=1e-5)
    assert result.fit.history == [] and result.fit.epochs == 0


def test_bad_problems(small_pair):
    guide, ion, _ = small_pair
    with pytest.raises(InputError, match="unknown method"):
        fuse(guide, ion, "nope")
    with pytest.raises(InputError, match="all zero"):
        fuse(guide, ion * 0, "bilinear")
    with pytest.raises(InputError, match=r"ion 2 of 2: ion image has \d+ NaN/inf pixel"):
        fuse_many(guide, np.stack([ion, np.where(ion > ion.mean(), np.nan, ion)]))
    with pytest.raises(InputError, match="integer multiple"):
        fuse(guide[:-1], ion, "bilinear")
    with pytest.raises(InputError, match="at least twice the ion's size"):
        fuse(guide[:8, :12], ion, "bilinear")
    with pytest.raises(InputError, match=r"optical image has shape \(32, 48, 5\); expected gray, RGB or RGBA"):
        fuse(np.concatenate([guide, guide[..., :2]], -1), ion, "bilinear")
    with pytest.raises(InputError, match=r"must be a 2-D \(h, w\) array, got shape \(1, 8, 12\)"):
        fuse(guide, ion[None], "bilinear")
    with pytest.raises(InputError, match=r"ion image is too small \(1×12; at least 2×2 pixels\)"):
        fuse(guide[:4], ion[:1], "bilinear")
    for one_row in (guide[:1], np.round(guide[:1] * 255).astype(np.uint8)):  # one check, float and integer guides
        with pytest.raises(InputError, match=r"optical image is too small \(1×48; at least 2×2 pixels\)"):
            fuse(one_row, ion, "bilinear")
    for peak, where in ((1e300, "beyond float32's range"), (3.3e38, r"too near float32's largest \(3.4e\+38\)")):
        with pytest.raises(InputError, match=rf"values reach \S+, {where}: the fused image, whose values can exceed"):
            fuse(guide, ion.astype(np.float64) / ion.max() * peak, "bilinear")
    assert np.isfinite(fuse(guide, ion / ion.max() * 1e32).image).all()


def test_bad_panels(small_pair):
    guide, ion, _ = small_pair
    from msifusion.io.images import Image

    with pytest.raises(InputError, match="fuse_many got no ion images"):
        fuse_many(guide, np.zeros((0, *ion.shape)))
    with pytest.raises(InputError, match=r"got shape \(8, 12\); for one ion use fuse"):
        fuse_many(guide, ion)
    with pytest.raises(InputError, match="ion 2 of 3: ion image is all zero"):
        fuse_many(guide, [ion, 0 * ion, ion])
    with pytest.raises(InputError, match="ion 1 of 1: the ion image is an Image; pass its pixels"):
        fuse_many(guide, [Image(ion)])
    with pytest.raises(InputError, match=r"drop its last axis \(ion\[..., 0\]\)"):
        fuse(guide, ion[..., None])
    coarser = ion.reshape(4, 2, 6, 2).mean(axis=(1, 3))  # the same guide at ×8
    with pytest.raises(InputError, match=r"fuses a panel together, so its ion images need one shape"):
        fuse_many(guide, [ion, coarser])
    one_by_one = fuse_many(guide, (i for i in (ion, coarser)), "bilinear")  # a generator; each at its own scale
    assert [r.scale for r in one_by_one] == [4, 8]
    assert [r.panel_share for r in one_by_one] == [False, False]  # each ion's own time


def test_a_panel_fused_together_says_its_times_are_shares(small_pair):
    guide, ion, _ = small_pair
    quiet = MethodOptions(runtime=Runtime(quiet=True))
    together = fuse_many(guide, [ion, 2 * ion], options=quiet)  # the default method shares the panel's work
    assert [r.panel_share for r in together] == [True, True] and together[0].seconds == together[1].seconds
    assert fuse(guide, ion, options=quiet).panel_share is False
    assert fuse_many(guide, [ion], options=quiet)[0].panel_share is False  # one ion: fused alone


def test_gray_rgba_channels_first_and_flipped_guides_are_read_as_files_are(small_pair):
    guide, ion, _ = small_pair
    quiet = MethodOptions(runtime=Runtime(quiet=True))
    rgb = fuse(guide, ion, options=quiet).image
    rgba = np.concatenate([guide, np.ones_like(guide[..., :1])], -1)
    np.testing.assert_array_equal(fuse(rgba, ion, options=quiet).image, rgb)
    np.testing.assert_array_equal(fuse(np.moveaxis(guide, -1, 0), ion, options=quiet).image, rgb)
    gray = guide.mean(-1)
    np.testing.assert_array_equal(fuse(gray, ion, options=quiet).image,
                                  fuse(np.repeat(gray[..., None], 3, -1), ion, options=quiet).image)
    for method in ("diffusion", "guided-harmonic"):  # a flipped view (negative strides) cannot back a tensor as is
        np.testing.assert_array_equal(fuse(guide[:, ::-1], ion, method, quiet).image,
                                      fuse(np.ascontiguousarray(guide[:, ::-1]), ion, method, quiet).image)


def test_fusing_leaves_the_callers_random_states_as_they_were(small_pair, global_random_state):
    import torch

    guide, ion, _ = small_pair
    torch.use_deterministic_algorithms(False)  # not what a fit sets: earlier tests may have left it on
    fuse(guide, ion, "lcrn", QUICK)
    fuse_many(guide, np.stack([ion, 2 * ion]), options=QUICK)
    assert global_random_state.draws() == global_random_state.expected
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_8_bit_guide_is_read_as_fractions_and_a_0_to_255_float_guide_is_refused(small_pair):
    import msifusion
    from msifusion.io.images import Image

    guide, ion, _ = small_pair
    as_bytes = np.round(guide * 255).astype(np.uint8)
    quiet = MethodOptions(runtime=Runtime(quiet=True))
    np.testing.assert_array_equal(fuse(as_bytes, ion, options=quiet).image,
                                  fuse(as_bytes / np.float32(255), ion, options=quiet).image)
    assert msifusion.fuse_many(as_bytes, np.stack([ion, 2 * ion]), "bilinear")[1].image.shape == guide.shape[:2]
    with pytest.raises(InputError, match=r"must be in \[0, 1\], got values from 70 to 212"):
        fuse(as_bytes.astype(np.float32), ion, "bilinear")
    with pytest.raises(InputError, match="contains NaN or inf"):
        fuse(np.where(guide > 0.5, np.nan, guide), ion, "bilinear")
    with pytest.raises(InputError, match=r"is an Image; pass its pixels"):
        fuse(Image(guide, None), ion, "bilinear")


def test_a_spot_wider_than_half_an_msi_pixel_is_refused(small_pair):
    from msifusion.measurement import MeasurementModel, consistency_error

    guide, ion, scale = small_pair
    half = scale / 2
    with pytest.raises(InputError, match="--spot-sigma: .* wider than half an MSI pixel"):
        fuse(guide, ion, options=MethodOptions(runtime=Runtime(quiet=True), measurement=MeasurementModel(half + 0.5)))
    at_bound = fuse(guide, ion, options=MethodOptions(runtime=Runtime(quiet=True), measurement=MeasurementModel(half)))
    assert consistency_error(at_bound.image, ion, scale, half) < 1e-6
    assert np.abs(at_bound.image).max() < 20 * np.abs(ion).max()  # no blown-up deblurring at the bound


def test_under_a_spot_the_consistent_methods_are_exact_and_others_are_not_called_exact(small_pair):
    """The back-projection methods and diffusion are exact under the stated spot; a method that is not (guided) has
    its error reported as it is."""
    from msifusion.measurement import MeasurementModel

    guide, ion, scale = small_pair
    options = MethodOptions(runtime=Runtime(quiet=True), measurement=MeasurementModel(1.5))
    for method in ("bilinear-bp", "guided-bp", "diffusion"):
        assert fuse(guide, ion, method, options).consistency_error < 1e-6
    assert fuse(guide, ion, "guided", options).consistency_error > 1e-3
    for method in ("bilinear-bp", "diffusion"):  # the box model, as before
        assert fuse(guide, ion, method).consistency_error < 1e-6


def test_a_method_is_refused_up_front_where_its_own_memory_would_not_fit(monkeypatch):
    """The trained methods fit the whole image at once, about 1.4 kB per fused pixel (measured), thirty times the
    default's: a machine that holds the default's fusion must refuse theirs before training, naming the method."""
    import msifusion.runtime as runtime
    from msifusion.methods import check_memory

    monkeypatch.setattr(runtime, "machine_memory_bytes", lambda: 1_000_000_000)
    guide, ion = np.full((1536, 1536, 3), 0.5, np.float32), np.ones((96, 96), np.float32)  # 2.36 M fused pixels
    check_memory(ion.shape, 16, DEFAULT_METHOD)  # 113 MB
    with pytest.raises(InputError, match=r"^--scale: ×16 makes a 1536×1536 fused image, about 3.3 GB to fuse with "
                                         r"--method lcrn, more than this machine's 1.0 GB of memory; use a smaller "
                                         r"scale or crop the ion image; the default method works in tiles$"):
        fuse(guide, ion, "lcrn", MethodOptions(runtime=Runtime(quiet=True)))
    with pytest.raises(InputError, match="with --method unet"):
        fuse_many(guide, np.stack([ion, ion]), "unet", MethodOptions(runtime=Runtime(quiet=True)))


def test_a_fitted_method_on_cuda_is_not_charged_its_activations_in_machine_memory(monkeypatch):
    import torch

    import msifusion.methods as methods

    assert methods.bytes_per_fused_pixel("lcrn") == 1400 and methods.bytes_per_fused_pixel("guided") == 240
    monkeypatch.setattr(methods, "resolve_device", lambda device: torch.device("cuda", 0))  # as on a CUDA machine
    assert methods.bytes_per_fused_pixel("lcrn", "cuda") == methods.BYTES_PER_FUSED_PIXEL  # in the GPU's memory
    assert methods.bytes_per_fused_pixel("guided", "cuda") == 240  # a closed form runs on the CPU whatever the device


@pytest.mark.parametrize("method", ["diffusion", "guided-harmonic"])
def test_a_read_only_guide_is_used_as_it_is(small_pair, method):
    """A memory-mapped or frozen guide gives the same image as a writable one (and no torch warning: the suite
    turns that warning into an error)."""
    guide, ion, _ = small_pair
    frozen = guide.copy()
    frozen.setflags(write=False)
    quiet = MethodOptions(runtime=Runtime(quiet=True))
    np.testing.assert_array_equal(fuse(frozen, ion, method, quiet).image, fuse(guide, ion, method, quiet).image)


def test_an_unavailable_device_is_an_input_error(small_pair):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    guide, ion, _ = small_pair
    with pytest.raises(InputError, match="CUDA is not available"):
        fuse(guide, ion, options=MethodOptions(runtime=Runtime(device="cuda", quiet=True)))


def test_scaling_to_ion_units_never_writes_into_arrays_the_method_does_not_own(monkeypatch):
    from msifusion.fit import FitResult
    from msifusion.methods import METHODS, Method, fuse, fuse_many

    def echo_guide(problem, options):  # returns a view of the caller's guide
        return FitResult(problem.guide[..., 0])

    def one_for_all(guide, ions, scale, options):  # hands every ion the same array
        image = np.ones(guide.shape[:2], np.float32)
        return [FitResult(image) for _ in ions]

    monkeypatch.setitem(METHODS, "echo", Method("echo", echo_guide, "test", run_many=one_for_all))
    guide = np.full((8, 12, 3), 0.5, np.float32)
    ion = np.full((2, 3), 40.0, np.float32)
    assert fuse(guide, ion, "echo").image.max() == pytest.approx(20.0)
    assert guide.max() == 0.5  # the caller's guide is left as it was
    results = fuse_many(guide, np.stack([ion, ion / 4]), "echo")
    assert [r.image.max() for r in results] == [40.0, 10.0]  # each ion scaled once, by its own peak


def test_the_method_is_named_in_one_place(small_pair):
    """``method`` names the method and the options hold the rest; a command's FuseSettings, which holds both, is
    refused as the options (it would name a second method) with the way to pass it."""
    from msifusion.workflows.fusion import FuseSettings

    guide, ion, _ = small_pair
    assert fuse(guide, ion).method == DEFAULT_METHOD
    assert fuse(guide, ion, "bicubic", MethodOptions()).method == "bicubic"
    settings = FuseSettings("bilinear")
    assert fuse(guide, ion, settings.method, settings.options).method == "bilinear"
    hint = (r" \(a FuseSettings holds a method and its options: pass settings.options as the options, and "
            r"settings.method as the method unless you name another\)$")
    for call in (lambda: fuse(guide, ion, options=settings), lambda: fuse_many(guide, ion[None], "bicubic", settings)):
        with pytest.raises(InputError, match=r"^options must be a MethodOptions, not FuseSettings" + hint):
            call()
    with pytest.raises(InputError, match=r"^method: a method is given by its name, a str \(`msifusion methods` lists "
                                         r"them\), not FuseSettings" + hint):
        fuse(guide, ion, settings)  # the settings where the method goes: its type named, not a page of its repr
    with pytest.raises(InputError, match="^method: unknown method ''"):
        fuse(guide, ion, "")  # an empty name is not the default
    with pytest.raises(TypeError, match="^FuseSettings.options must be a MethodOptions, not NoneType$"):
        FuseSettings(options=None)


@pytest.mark.parametrize("call, error, message", [
    (lambda g, i: fuse(g, i, options={"seed": 1}), InputError,
     "options must be a MethodOptions, not dict"),
    (lambda g, i: fuse(g, "ion.tiff"), InputError,
     "the ion image must be an array, not str; read a file with msifusion.read_ion(path).pixels"),
    (lambda g, i: fuse(None, i), InputError,
     "the optical guide must be an array, not NoneType; read a file with msifusion.read_optical(path).pixels"),
    (lambda g, i: fuse(g, np.ma.masked_array(i, mask=np.eye(*i.shape, dtype=bool))), InputError,
     "the ion image has 8 masked pixel(s); fill them "
     "first (value.filled(…)): the tool cannot guess whether they mean no spectrum or a bad value"),
    (lambda g, i: MethodOptions(harmonic=HarmonicConfig(texture=(0.0,))), TypeError,
     "HarmonicConfig.texture must be a TextureSettings, not tuple"),
])
def test_python_callers_get_one_line_errors_for_wrong_types(small_pair, call, error, message):
    guide, ion, _ = small_pair
    with pytest.raises(error) as caught:
        call(guide, ion)
    assert str(caught.value) == message


def test_tab_completion_lists_the_lazy_names():
    import msifusion

    assert {"fuse", "fuse_many", "read_ion", "read_optical", "InputError"} <= set(dir(msifusion))


def _result(fused: np.ndarray, method: str = "guided-harmonic", consistency: float = 1e-8, **fit) -> FusionResult:
    from msifusion.fit import FitResult

    return FusionResult(fused, method, 4, FitResult(fused, **fit), 1.0, 1.0, consistency)


def test_negatives_under_a_laser_spot_are_explained_by_it():
    from msifusion.methods import output_warnings

    ion = np.array([[0.0, 4.0], [2.0, 1.0]], np.float32)

    def warnings(dip: float, spot: float, sign: float = 1.0, consistency: float = 1e-8) -> list[str]:
        fused = np.kron(ion, np.ones((4, 4), np.float32))
        fused[0, 3] = -dip  # a dip beside an MSI pixel measured at zero
        fused[7, 7] = -1e-9  # float rounding: not counted
        return output_warnings(_result(sign * fused, consistency=consistency), sign * ion, spot)

    (box,) = warnings(0.1, 0.0)
    assert box.startswith("the guided-harmonic output is not in the ion's units: negative values (min -0.1, "
                          "2.50% of the ion's peak; 1 of 64 pixels) from a non-negative ion image")
    (spot,) = warnings(0.1, 1.5)
    assert spot == ("the guided-harmonic output has negative values (min -0.1, 2.50% of the ion's peak; 1 of 64 "
                    "pixels); undoing the laser spot (spot σ 1.5 px) exactly sharpens the measurement's own contrast "
                    "(bright MSI pixels beside dim ones, noise), the more the wider the spot, and dips below zero where "
                    "it is steep; the image is exact under that model, so clip them for display only")
    (deep,) = warnings(6.0, 1.5)  # deeper than the peak (4): a spot that wide would have blurred that contrast away
    assert "pixels) deeper than the ion's peak, so the measurement has contrast a spot that wide would have blurred " \
           "away (a hot or outlying MSI pixel, or σ stated wider than the instrument's); undoing the laser spot" in deep
    (mirrored,) = warnings(0.1, 1.5, sign=-1.0)  # an ion ≤ 0 everywhere: its wrong sign is positive
    assert mirrored.startswith("the guided-harmonic output has positive values (max 0.1, 2.50% of the ion's peak")
    assert warnings(0.01, 1.5) == [] and len(warnings(0.01, 0.0)) == 1  # under a spot, dips under 1 % of the peak pass
    (inexact,) = warnings(0.1, 1.5, consistency=0.05)  # not exact under the spot: its dips are not the spot's
    assert inexact.startswith("the guided-harmonic output is not in the ion's units: negative values")
    assert "exact under that model" not in inexact


def test_an_inconsistent_network_output_is_told_to_fit_longer():
    from msifusion.methods import output_warnings

    ion = np.array([[1.0, 4.0], [2.0, 1.0]], np.float32)
    fused = np.full((8, 8), 2.0, np.float32)
    stop = "early stop: the edge loss rose 5 times in all, at epochs 4, 11"
    (warning,) = output_warnings(_result(fused, "lcrn", 0.785, epochs=23, stop_reason=stop), ion)
    assert warning.endswith("consistency error 0.785 > 0.5 (averaged back over each MSI pixel it does not give the "
                            "measured image); the fit stopped at epoch 23 (early stop: the edge loss rose 5 times in "
                            "all, at epochs 4, 11) before it matched the measurement; fit without early stopping "
                            "(patience 0) for more epochs, or try another method")
    (warning,) = output_warnings(_result(fused, "unet", 0.785, epochs=3, stop_reason="completed 3 stages (1, 1, 1)"),
                                 ion)  # the U-Net has no early stopping to turn off: more epochs is the advice
    assert warning.endswith("before it matched the measurement; give it more epochs (--epochs), or try another method")
    (warning,) = output_warnings(_result(fused, "unet", 0.785, epochs=400, stop_reason="completed 3 stages "
                                         "(200, 100, 100)"), ion)  # its recipe's end: more epochs would not be run
    assert warning.endswith("before it matched the measurement; its recipe ends at 400 epochs, or try another method")


def test_a_result_from_python_carries_its_warnings(small_pair):
    guide, ion, _ = small_pair
    assert fuse(guide, ion, "bilinear-bp").warnings == []
    (warning,) = fuse(guide, ion, "lcrn", QUICK).warnings
    assert warning.startswith("the lcrn output is not in the ion's units: ") and "consistency error" in warning
