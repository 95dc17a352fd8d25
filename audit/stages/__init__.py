"""The audit's stages: each module computes one stage's figures from an ``AuditRun`` and writes no files.

``performance`` (predictions, metrics), ``explanations`` (Grad-CAM, IG, the gallery's maps), ``quality``
(agreement, stability, faithfulness, randomisation, localisation, convergence, each beside its controls),
``data`` (leakage, training overlap, how the split keeps subjects apart) and ``change`` (the candidate
against a baseline). ``audit.runner`` caches what they return; ``audit.writer`` writes it.
"""
