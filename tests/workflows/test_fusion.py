import json

import numpy as np
import pytest


def _pair(optical_shape, optical_um, ion_um, scale=None, given_um=None):
    from msifusion.io.images import Image
    from msifusion.workflows.fusion import pair_images

    optical = Image(np.random.default_rng(0).random((*optical_shape, 3), np.float32), optical_um)
    ion = Image(np.ones((10, 12), np.float32), ion_um)
    return pair_images(optical, ion, scale, given_um)


def test_an_optical_coarser_than_the_fused_grid_is_warned():
    assert _pair((80, 96), 2.5, 20.0, scale=8).warnings == []  # registered at ×8: no warning
    enlarged = _pair((20, 24), 10.0, 20.0, scale=8)  # 2 optical pixels per ion pixel, fused at ×8
    assert enlarged.guide.shape[:2] == (80, 96)
    assert enlarged.warnings == ["the optical's pixels cover 10 µm of the section, coarser than the fused grid's 2.5 "
                                 "µm at ×8: the fused image has no optical detail at its resolution; ×2 would do as "
                                 "well"]  # in µm where the pair is calibrated, in MSI pixels where it is not:
    assert _pair((20, 24), None, None, scale=8).warnings == [
        "the optical's pixels cover 0.5 MSI pixels of the section, coarser than the fused grid's 0.125 MSI pixels at "
        "×8: the fused image has no optical detail at its resolution; ×2 would do as well"]


def test_a_pixel_size_that_contradicts_the_optical_calibration_is_warned():
    assert _pair((80, 96), 2.5, None, given_um=21.0).warnings == []  # within 25 %
    (warning,) = _pair((80, 96), 2.5, None, given_um=50.0).warnings
    assert warning.startswith("--pixel-size (50 µm per ion pixel) disagrees with the optical's calibration "
                              "(2.5 µm per optical pixel, i.e. 20 µm per ion pixel) by 2.5×")
    assert warning.endswith("the outputs use 50 µm per ion pixel")
    assert _pair((80, 96), 2.5, None, given_um=50.0).ion_pixel_size_um == 50.0  # the user's value is kept


def test_an_optical_without_a_scale_is_offered_a_resize_only_where_its_aspect_allows():
    import pytest

    from msifusion.errors import InputError

    with pytest.raises(InputError, match=r"not an integer multiple of ion shape 10×12; register it to the ion grid, or "
                                         r"pass --scale N to resize it$"):
        _pair((81, 96), None, 20.0)
    with pytest.raises(InputError, match=r"×10 the ion's height and ×15 its width \(10×12\); the two factors must be "
                                         r"equal; register it to the ion grid \(resizing would stretch it: its aspect "
                                         r"ratio is 33.3% off the ion's\)$"):
        _pair((100, 180), None, 20.0)


def test_what_the_readers_noticed_reaches_the_run_warnings(tmp_path):
    """A calibration the reader ignored is named as ignored, not as absent; an Orientation tag is warned about."""
    import tifffile

    from msifusion.workflows.fusion import FuseFilesRequest, FuseSettings, fuse_files

    rng = np.random.default_rng(0)
    optical = (rng.random((32, 48, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "optical.tif", optical, photometric="rgb", extratags=[(274, 3, 1, 3, False)])
    tifffile.imwrite(tmp_path / "ion.tif", rng.random((8, 12)).astype(np.float32),
                     resolution=(1e4 / 25, 1e4 / 50), resolutionunit="CENTIMETER")
    record = fuse_files(FuseFilesRequest(tmp_path / "optical.tif", tmp_path / "ion.tif", tmp_path / "out",
                                         FuseSettings(method="bilinear")))
    warnings = "\n".join(record["warnings"])
    assert "optical.tif has Orientation 3 (photo viewers show it rotated 180°" in warnings
    assert ("no pixel size (ion: neither image has a usable calibration; ion.tif's was ignored: its pixels are not "
            "square (25 × 50 µm)") in warnings
    assert json.loads((tmp_path / "out" / "run.json").read_text())["warnings"] == record["warnings"]


def test_scale_stretches_an_optical_only_within_two_percent_of_the_ion_aspect():
    import pytest

    from msifusion.errors import InputError

    assert _pair((80, 97), None, 20.0, scale=8).guide.shape[:2] == (80, 96)  # 1 % off: resized
    with pytest.raises(InputError, match="4.0% off"):  # under one ion pixel (0.4), yet a 4 % stretch
        _pair((80, 100), None, 20.0, scale=8)
    with pytest.raises(InputError, match="3.8% off"):  # the same along the other axis
        _pair((83, 96), None, 20.0, scale=8)


def test_an_optical_with_fewer_pixels_than_the_ion_is_taken_for_swapped_inputs():
    import pytest

    from msifusion.errors import InputError

    for scale in (None, 8):
        with pytest.raises(InputError, match="wrong way round"):
            _pair((5, 6), None, 20.0, scale=scale)
    with pytest.raises(InputError, match="aspect ratio"):  # shorter on one side only: not registered, not swapped
        _pair((9, 400), None, 20.0, scale=8)


def test_an_optical_turned_by_90_degrees_is_named_as_such():
    import pytest

    from msifusion.errors import InputError

    turned = "it has the ion's aspect ratio with rows and columns swapped: turn it by 90° or transpose it first"
    for scale in (None, 8):  # ion 10×12: the registered optical at ×8 is 80×96, turned it is 96×80
        with pytest.raises(InputError, match=turned):
            _pair((96, 80), None, 20.0, scale=scale)
    with pytest.raises(InputError) as caught:  # merely another shape: no such hint
        _pair((96, 100), None, 20.0)
    assert "swapped" not in str(caught.value)


def test_checkpoint_folder_is_made_at_the_first_save(tmp_path):
    """A run that stops before its first checkpoint leaves no empty checkpoints/ folder."""
    from msifusion.workflows.fusion import checkpoint_writer

    import tifffile

    write = checkpoint_writer(tmp_path / "checkpoints", 2.0, 1.5, "m/z 656.7762")
    assert not (tmp_path / "checkpoints").exists()
    write(3, np.ones((4, 5), np.float32))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_0003.png", "epoch_0003.tiff"]
    with tifffile.TiffFile(tmp_path / "checkpoints" / "epoch_0003.tiff") as tif:
        assert 'Name="m/z 656.7762, epoch 3"' in tif.ome_metadata and tif.asarray().max() == 2.0


def test_a_panel_folds_its_ions_spot_dips_into_one_warning():
    from msifusion.methods import spot_dip_note
    from msifusion.workflows.fusion import panel_record

    def record(name: str, dipped: bool, other: str | None = None) -> dict:
        warnings = [f"{name}: the guided-harmonic output has negative values (min -{name}): {spot_dip_note(2)}"] \
            if dipped else []
        return {"method": "guided-harmonic", "measurement_model": {"spot_sigma_px": 2.0}, "ion_name": name,
                "warnings": warnings + ([other] if other else [])}

    records = [record("a", True), record("b", False, "b is odd"), record("c", True)]
    summary = panel_record(records, ["a", "b", "c"], ["shared"])
    assert summary["warnings"] == ["shared", "b is odd", "the guided-harmonic outputs for 2 of 3 ions (a, c) have "
                                   "wrong-signed values beyond 1% of their peak (each ion's under \"ions\" in "
                                   "run.json): " + spot_dip_note(2)]
    assert summary["ions"]["c"]["warnings"] == records[2]["warnings"]  # each ion keeps its own numbers
    lone = panel_record(records[:2], ["a", "b"], [])  # a single ion's warning stays as it is
    assert lone["warnings"] == [*records[0]["warnings"], "b is odd"]


def test_an_ion_tiff_keeps_its_channel_name_through_a_fusion(tmp_path):
    import tifffile

    from msifusion.io.images import write_tiff
    from msifusion.workflows.fusion import FuseFilesRequest, FuseSettings, fuse_files

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "optical.tif", (rng.random((32, 48, 3)) * 255).astype(np.uint8), photometric="rgb")
    write_tiff(tmp_path / "mz_1217.5161.tiff", rng.random((8, 12)), 25.0, ["m/z 1217.5161"])  # as `ions` writes it
    write_tiff(tmp_path / "plain.tiff", rng.random((8, 12)), 25.0)
    write_tiff(tmp_path / "other.tiff", rng.random((8, 12)), 25.0, ["Channel 1"])  # another tool's name: not an ion's
    write_tiff(tmp_path / "epoch_0003.tiff", rng.random((8, 12)), 25.0, ["m/z 656.7762, epoch 3"])  # a checkpoint
    write_tiff(tmp_path / "section.OME.tif", rng.random((8, 12)), 25.0)  # named without its .ome
    for ion, name in (("mz_1217.5161.tiff", "m/z 1217.5161"), ("plain.tiff", "plain"), ("other.tiff", "other"),
                      ("epoch_0003.tiff", "m/z 656.7762"), ("section.OME.tif", "section")):
        record = fuse_files(FuseFilesRequest(tmp_path / "optical.tif", tmp_path / ion, tmp_path / name.replace("/", ""),
                                             FuseSettings(method="bilinear")))
        assert record["ion_name"] == name
        with tifffile.TiffFile(tmp_path / name.replace("/", "") / "fused.tiff") as tif:
            assert f'Name="{name}"' in tif.ome_metadata


def test_an_ion_tiff_with_lines_of_zeros_and_no_acquired_tiff_is_warned_about(tmp_path):
    """Without acquired.tiff (a TIFF from another tool) a raster's skipped columns cannot be filled, but are said."""
    import tifffile

    from msifusion.workflows.fusion import FuseFilesRequest, FuseSettings, fuse_files

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "optical.tif", (rng.random((32, 48, 3)) * 255).astype(np.uint8), photometric="rgb")
    ion = 1 + rng.random((8, 12)).astype(np.float32)
    tifffile.imwrite(tmp_path / "whole.tif", ion)
    ion[:, 3] = ion[:, 7] = 0
    tifffile.imwrite(tmp_path / "skipped.tif", ion)
    settings = FuseSettings(method="bilinear")
    optical = tmp_path / "optical.tif"
    record = fuse_files(FuseFilesRequest(optical, tmp_path / "skipped.tif", tmp_path / "out", settings))
    assert record["warnings"][0].startswith("skipped.tif: 2 columns (3, 7), numbered from 0, hold only zeros between "
                                            "lines that do not")
    assert record["gaps_filled"] == 0
    record = fuse_files(FuseFilesRequest(optical, tmp_path / "whole.tif", tmp_path / "whole", settings))
    assert not any("only zeros" in warning for warning in record["warnings"])
    beside = tmp_path / "beside"  # an acquired.tiff that no msifusion run wrote with it tells nothing of this image
    beside.mkdir()
    tifffile.imwrite(beside / "skipped.tif", ion)
    tifffile.imwrite(beside / "acquired.tiff", np.ones(ion.shape, np.uint8))
    record = fuse_files(FuseFilesRequest(optical, beside / "skipped.tif", tmp_path / "b", settings))
    assert record["warnings"][0].startswith("skipped.tif: 2 columns (3, 7), numbered from 0, hold only zeros")
    exact = FuseSettings(method="bilinear-bp")  # its block means are the (filled) measurement
    filled = fuse_files(FuseFilesRequest(optical, tmp_path / "skipped.tif", tmp_path / "f", exact,
                                         fill_zero_lines=True))
    assert filled["gaps_filled"] == 16 and filled["warnings"][0] == (
        "skipped.tif: 2 columns (3, 7), numbered from 0, hold only zeros between lines that do not: taken for pixels "
        "without a spectrum (--fill-zero-lines), 16 of them, between non-zero ones, were given the mean of their "
        "neighbours before fusion, not fused as measured zeros")
    measured = tifffile.imread(tmp_path / "f" / "fused.tiff").reshape(8, 4, 12, 4).mean(axis=(1, 3))
    assert measured[2, 3] == pytest.approx(ion[1:4, [2, 4]].mean(), rel=1e-5)  # its six non-zero neighbours
    tifffile.imwrite(beside / "acquired.tiff", np.ones((5, 5), np.uint8) * np.arange(5) % 2)  # another image's, with
    record = fuse_files(FuseFilesRequest(optical, beside / "skipped.tif", tmp_path / "g", exact,  # gaps: not used,
                                         fill_zero_lines=True))  # and the lines filled all the same
    assert record["gaps_filled"] == 16 and record["warnings"][:2] == [
        f"{beside / 'acquired.tiff'} was not used (it is 5×5, the ion image 8×12)",
        filled["warnings"][0]]
    margin = np.zeros((10, 14), np.float32)  # tissue with an empty margin: the line's crossing of it is filled
    margin[1:9, 1:13] = ion
    tifffile.imwrite(tmp_path / "margin.tif", margin)
    tifffile.imwrite(tmp_path / "optical_margin.tif", (rng.random((40, 56, 3)) * 255).astype(np.uint8),
                     photometric="rgb")
    record = fuse_files(FuseFilesRequest(tmp_path / "optical_margin.tif", tmp_path / "margin.tif", tmp_path / "m",
                                         exact, fill_zero_lines=True))
    assert record["gaps_filled"] == 16  # not the margin's 4 pixels on the two columns
    fused = tifffile.imread(tmp_path / "m" / "fused.tiff").reshape(10, 4, 14, 4).mean(axis=(1, 3))
    assert abs(fused[0, 4]) < 1e-6 and abs(fused[9, 8]) < 1e-6 and fused[5, 4] > 1  # the margin stays empty
    whole = fuse_files(FuseFilesRequest(optical, tmp_path / "whole.tif", tmp_path / "w", settings,
                                        fill_zero_lines=True))
    assert whole["gaps_filled"] == 0 and not any("zero" in warning for warning in whole["warnings"])
