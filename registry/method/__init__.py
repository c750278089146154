"""The SafeGene method: how vectors are sliced and extracted (``extract``), the
``Vectors`` service (``vectors``), layer scoring and the λ fit with its loss
(``recalibrate``, settings in ``fit_settings``) behind the ``Recalibrator``
service (``pipeline``), resolution (``resolve``), and patching (``patching``
writes the folder, ``patcher`` is the service)."""
