"""The SafeGene method: vector extraction (``extract``), layer scoring and the
λ fit with its loss (``recalibrate``, settings in ``fit_settings``), resolution
and the scoring/recalibration service (``pipeline``), and patching (``patching``
writes the folder, ``patcher`` is the service)."""
