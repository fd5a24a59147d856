"""The mean spectrum's peaks (:mod:`msifusion.io.spectra`); read from imzML files in tests/io/test_imzml.py."""

import numpy as np
import pytest

from msifusion.io.spectra import (MAX_LISTED_PEAKS, Profile, WindowBins, channel_profile, local_maxima,
                                  reaches_isotope, resolved_peaks)


def test_a_continuous_files_channels_that_share_an_m_z_are_one_point_of_its_mean_spectrum():
    mz = np.array([300.0, 100.0, 200.0, 100.0])  # unsorted, 100 twice (two channels, as some writers repeat them)
    total, squares = np.array([8.0, 2.0, 4.0, 6.0]), np.array([40.0, 4.0, 16.0, 20.0])
    p = channel_profile(mz, total, squares, n_spectra=2)
    np.testing.assert_array_equal(p.mz, [100.0, 200.0, 300.0])
    np.testing.assert_allclose(p.mean, [4.0, 2.0, 4.0])  # (2 + 6) / 2, 4 / 2, 8 / 2
    # se = sqrt((squares / n − mean²) / n), its variance floored at 0 (100: 24 / 2 − 16 < 0)
    np.testing.assert_allclose(p.se, [0.0, np.sqrt(2.0), np.sqrt(2.0)])


def test_window_bins_sum_each_windows_points_in_log_spaced_bins():
    bins = WindowBins(np.array([100.0, 200.0]), np.array([100.01, 200.02]), bin_ppm=50.0)  # 100 ppm each: 2 bins
    mz = np.array([100.0, 100.009, 150.0, 200.0, 200.019])
    bins.add(mz, np.array([1.0, 2.0, 9.0, 3.0, 4.0]), np.array([0, 3]), np.array([2, 5]))
    first, second = bins.profiles(n_spectra=1)
    assert (first.mean.size, second.mean.size) == (2, 2)
    assert first.mean.sum() == 3.0 and second.mean.sum() == 7.0  # the point at 150 is in neither window
    assert first.mz == pytest.approx([100.0, 100.009]) and second.mz == pytest.approx([200.0, 200.019])


def test_local_maxima_count_a_flat_top_once_and_reaching_a_singly_charged_isotope():
    assert local_maxima(np.array([1.0, 3.0, 3.0, 2.0, 5.0])).tolist() == [False, False, True, False, True]
    assert reaches_isotope(500.0, 499.0, 501.01) and not reaches_isotope(500.0, 499.5, 500.5)


def test_resolved_peaks_need_a_valley_a_share_a_separation_and_to_stand_above_the_scatter() -> None:
    mz = np.linspace(499.5, 500.5, 11)  # profile points 0.1 Da apart
    profile = np.array([0, 10, 80, 100, 40, 5, 30, 60, 20, 0, 0], float)  # a valley (5) under half the lower peak (60)

    def peaks(mean, se=None, mzs=mz, centroid=False):
        return resolved_peaks(Profile(mzs, mean, se, np.ones(mzs.size, bool)), centroid, True)

    assert peaks(profile) == pytest.approx([499.8, 500.2])
    assert peaks(profile, np.full(11, 10.0)) == pytest.approx([499.8, 500.2])  # 60 − 5 = 5.5 standard errors
    assert peaks(profile, np.full(11, 20.0)) == pytest.approx([499.8])  # 2.75: the scatter of a few spectra
    shoulder = profile.copy()
    shoulder[5] = 45.0  # the profile never falls below half of 60 between them: one peak with a shoulder
    assert peaks(shoulder) == pytest.approx([499.8])
    weak = profile * np.where(np.arange(11) >= 6, 0.1, 1)  # the second under a tenth of the first
    assert peaks(weak) == pytest.approx([499.8])
    flank = np.array([0, 10, 80, 100, 40, 5, 5, 10, 20, 40, 70], float)  # rising into the window's end: a flank
    assert peaks(flank) == pytest.approx([499.8])
    close = np.array([400.0, 400.002])  # centroids 5 ppm apart are one peak, as `peaks` counts them
    assert peaks(np.array([9.0, 8.0]), mzs=close, centroid=True) == [400.0]
    comb = np.tile([0.0, 10.0], 20)  # 20 equal peaks: the list stops past what a warning names
    assert len(peaks(comb, mzs=np.linspace(500, 501, 40), centroid=True)) == MAX_LISTED_PEAKS + 1
