"""Certified cascades: routing rules that come with a finite-sample guarantee.

A certificate says, for example, *this cascade agrees with its last stage on at least 99%
of samples, with 95% confidence, at 31% of its cost*. The statement is about the population
the calibration samples were drawn from: with probability at least ``1 - delta`` over their
draw, the guaranteed quantity of the returned rule is at least ``target``, for future data
exchangeable with them and the same fitted stages.

The method is Learn then Test (Angelopoulos, Bates, Candès, Jordan and Lei, 2021) with
fixed-sequence testing along a path:

1. split the calibration samples at random into a path part and a testing part;
2. on the path part only, order candidate settings from the safest (every sample to the
   last stage) towards the cheapest, with the tuner's accuracy-cost frontier
   ([`tune_cascade_from_proba`][cascademl.tuning.tune_cascade_from_proba]'s search); for
   the reject option, reject thresholds from high to low;
3. on the testing part, test each setting's hypothesis "it misses the target" in order
   with the exact binomial p-value (the loss is 0/1), and stop at the first that does not
   pass: every setting before it is certified at once, with family-wise error at most
   ``delta``;
4. return the certified setting with the lowest mean cost (the largest coverage).

Routing is the cascade's own: exits come from the tuner's cached exits (``exit_mask`` of
``cascademl._routing``), final probabilities from
[`combine_votes`][cascademl.voting.combine_votes], and abstentions from
[`abstain_mask`][cascademl.abstention.abstain_mask].
"""

from cascademl.certify._apply import apply_certificate, certify_cascade
from cascademl.certify._certificate import Certificate, CertificatePoint, Guarantee
from cascademl.certify._core import certify_cascade_from_proba, required_calibration_size
from cascademl.certify._stats import (
    binomial_p_value,
    lower_confidence_bound,
    required_test_size,
)
from cascademl.exceptions import CertificationWarning

__all__ = [
    "Certificate",
    "CertificatePoint",
    "CertificationWarning",
    "Guarantee",
    "apply_certificate",
    "binomial_p_value",
    "certify_cascade",
    "certify_cascade_from_proba",
    "lower_confidence_bound",
    "required_calibration_size",
    "required_test_size",
]
