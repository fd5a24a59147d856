"""The commands' workflows, usable from Python: each checks its inputs before any work, stages its outputs, and writes
an output folder with its ``run.json`` (:class:`msifusion.provenance.OutputRun`).

- :mod:`~msifusion.workflows.fusion`: a registered optical and ion image → fused outputs (``msifusion fuse --ion``:
  :func:`~msifusion.workflows.fusion.fuse_files`), and the pairing, writing and records every other workflow shares;
- :mod:`~msifusion.workflows.from_imzml`: the commands that start from MSI data (``ions``, ``register``,
  ``fuse --imzml``);
- :mod:`~msifusion.workflows.demo`: the embedded synthetic demo (``demo``);
- :mod:`~msifusion.workflows.benchmark`: every method on every case with a known truth (``benchmark``);
- :mod:`~msifusion.workflows.study`: the paper's training study (``study``).

The algorithms they call live outside this package (``io``, ``register``, ``measurement``, ``methods``, ``harmonic``,
``models``, ``fit``, ``metrics``, ``report``) and never import from it.
"""
