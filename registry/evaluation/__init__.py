"""Evaluation: prompt rendering and generation (``textio``), probe files
(``probes``), judges (``judges``), harmful / task / over-refusal rates
(``evaluate``) and plots (``plots``)."""
