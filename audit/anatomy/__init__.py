"""An anatomical prior for slices without masks: register to MNI152, then map where AD evidence shows.

See docs/anatomical_prior.md. Pure computation: nothing here writes files.
"""
from audit.anatomy.prior import PRIOR_REGIONS, REGIONS, ad_prior, prior_regions, template_brain
from audit.anatomy.registration import PRIOR_Z_MM, SliceRegistration, register_slices

__all__ = ["PRIOR_REGIONS", "PRIOR_Z_MM", "REGIONS", "SliceRegistration", "ad_prior", "prior_regions", "register_slices", "template_brain"]
