"""The four Alzheimer's stages in their one fixed order, and the folder-name aliases that map onto them."""
from __future__ import annotations

import re

CLASSES: tuple[str, ...] = ("NonDemented", "VeryMildDemented", "MildDemented", "ModerateDemented")
# The stage whose evidence is the *absence* of atrophy. No mask can mark it, and blurring a region (the
# "removed" state of deletion/insertion curves) makes a brain look healthier, i.e. adds evidence for it:
# the explanation checks that ask a map to point at the evidence or to remove it skip its images.
REFERENCE_CLASS = "NonDemented"

# Keyed by a normalised name (lower case, letters only). Covers the Kaggle augmented/original dataset,
# its "4 class of Images" upstream (file prefixes nonDem/verymildDem/mildDem/moderateDem) and the
# OASIS slice exports ("Non Demented", "Very mild Dementia", ...).
_ALIASES: dict[str, str] = {
    "nondemented": "NonDemented",
    "nondementia": "NonDemented",
    "nondem": "NonDemented",
    "cn": "NonDemented",
    "verymilddemented": "VeryMildDemented",
    "verymilddementia": "VeryMildDemented",
    "verymilddem": "VeryMildDemented",
    "milddemented": "MildDemented",
    "milddementia": "MildDemented",
    "milddem": "MildDemented",
    "moderatedemented": "ModerateDemented",
    "moderatedementia": "ModerateDemented",
    "moderatedem": "ModerateDemented",
}


def normalise_name(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def canonical_class(name: str) -> str | None:
    """Map a folder name such as ``"Very mild Dementia"`` or ``"Mild_Demented"`` onto a stage, else None."""
    return _ALIASES.get(normalise_name(name))


def class_index(name: str) -> int:
    return CLASSES.index(name)
