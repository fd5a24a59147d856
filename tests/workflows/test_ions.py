"""`msifusion ions` on its own: it loads neither the fusion methods nor torch, and its record says what it did load."""

import json
import subprocess
import sys

import numpy as np
from pyimzml.ImzMLWriter import ImzMLWriter


def test_ions_loads_no_torch_and_records_the_libraries_it_used(tmp_path):
    """Exporting ions took 4.6 s on the prostate example, 1.7 s of them loading torch (and 180 MB) only for run.json
    to name its version; a run.json names the libraries the run loaded."""
    imzml = tmp_path / "tiny.imzML"
    with ImzMLWriter(str(imzml), mode="continuous", mz_dtype=np.float64, intensity_dtype=np.float32) as w:
        for r in range(4):
            for c in range(5):
                w.addSpectrum(np.array([100.0, 200.0]), np.array([r + c + 1.0, 1.0], np.float32), (c + 1, r + 1))
    script = ("import sys; from msifusion.cli import main; "
              f"code = main(['ions', {str(imzml)!r}, '--mz', '100', '--tol', '0.01da', '--out', "
              f"{str(tmp_path / 'ions')!r}, '--quiet']); "
              "print(code, sorted(m for m in ('torch', 'msifusion.methods', 'msifusion.harmonic')\n"
              "                   if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "0 []", done.stderr
    record = json.loads((tmp_path / "ions" / "run.json").read_text())
    assert {"numpy", "tifffile", "pyimzML", "matplotlib"} <= set(record["versions"])
    assert "torch" not in record["versions"]
    assert record["machine"]["torch_threads"] is None and record["machine"]["cuda_devices"] is None
