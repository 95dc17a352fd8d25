"""What one audit looks at: the model, the evaluated split, its images, labels, subjects and masks.

``AuditInputs`` loads each on first access; ``audit.runner.AuditRun`` adds the figures computed from them.
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import numpy as np

from audit.sampling import disease_mask
from model.classes import CLASSES
from model.contract import ModelContract, read_contract
from model.manifest import Manifest


class AuditInputs:
    """The model and split of one audit, loaded lazily (a bad file fails when first needed, with its name)."""

    def __init__(self, model_path: str | Path, data: str | Path | Manifest, out_dir: str | Path, config, *,
                 input_scale: float = 255.0, classes: tuple[str, ...] = CLASSES, unsafe: bool = False, model=None):
        self.model_path = Path(model_path)
        self.data = data
        self.out_dir = Path(out_dir)
        self.config = config
        self.input_scale = input_scale
        self.classes = tuple(classes)
        self.unsafe = unsafe
        self._model = model

    def has(self, name: str) -> bool:
        """Whether ``name`` (a lazily computed property) has been computed: the writer records only what ran."""
        return name in self.__dict__

    @cached_property
    def model(self):
        if self._model is not None:
            return self._model
        from audit.distribute import load_model

        return load_model(self.model_path, self.strategy, unsafe=self.unsafe)

    @cached_property
    def strategy(self):
        """The tf.distribute strategy of the heavy arrays, or None for today's single-device path."""
        from audit.distribute import get_strategy, kind

        strategy = get_strategy(self.config.strategy)
        return None if kind(strategy) == "one" else strategy

    @cached_property
    def model_sha256(self) -> str:
        from audit.binding import file_sha256

        return file_sha256(self.model_path)

    @cached_property
    def contract(self) -> ModelContract:
        return read_contract(self.model, input_scale=self.input_scale, classes=self.classes,
                             source=str(self.model_path))

    @cached_property
    def _resolved(self):
        from audit.binding import resolve_data

        return resolve_data(self.model_path, self.data, seed=self.config.seed)

    @cached_property
    def manifest(self) -> Manifest:
        """The manifest evaluated: the model's run split unless --data brings a split (audit.binding)."""
        return self._resolved[0]

    @cached_property
    def split_source(self):
        return self._resolved[1]

    @cached_property
    def split(self) -> Manifest:
        return self.manifest.split(self.config.split)

    @cached_property
    def images(self) -> np.ndarray:
        """uint8 ``(N, H, W)`` slices of the split at the model's input size."""
        from model.pipeline import load_slices

        return load_slices(self.split.samples, (self.contract.height, self.contract.width),
                           progress=self.config.progress, description="loading slices")

    @cached_property
    def inputs(self) -> np.ndarray:
        return self.contract.prepare(self.images)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.array(self.split.label_indices())

    @cached_property
    def subjects(self) -> list:
        """Subject ID per image of the split (None where unknown): the bootstrap's resampling unit."""
        return [s.subject_id for s in self.split.samples]

    @property
    def disease_mask(self) -> np.ndarray:
        """True for images whose stage has visible evidence (every stage but REFERENCE_CLASS)."""
        return disease_mask(self.labels)

    @cached_property
    def masks(self) -> np.ndarray | None:
        from model.pipeline import load_masks

        return load_masks(self.split.samples, (self.contract.height, self.contract.width))

    @cached_property
    def brain_masks(self) -> np.ndarray | None:
        from model.pipeline import load_masks

        return load_masks(self.split.samples, (self.contract.height, self.contract.width), column="brain_mask_path")

    @cached_property
    def image_hashes(self) -> list[str | None]:
        """SHA-256 of each evaluated file's bytes, read once for the cache keys and the train overlap."""
        from audit.binding import content_hashes

        return content_hashes(s.path for s in self.split.samples)

    @cached_property
    def images_sha256(self) -> str:
        """One hash over the evaluated split: each image's bytes with its label, in order."""
        digest = hashlib.sha256()
        for sample_, content in zip(self.split.samples, self.image_hashes):
            digest.update(f"{content}|{sample_.label}|{sample_.subject_id}\n".encode())
        return digest.hexdigest()
