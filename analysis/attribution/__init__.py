"""Where a fork's time goes: the replay model's operation counts matched with measurements.

Two independent estimates per component (components.py):
1. fit.py: measured phase times regressed on the model's counts (counts.py)
   across forks whose counts differ (non-negative least squares, bootstrap
   intervals, collinear counts merged and named);
2. samples.py: sampled kernel stacks classified by their frames, sample share
   times measured phase time.
attribute.py puts them side by side, says where they disagree, and predicts
another layout's times from one recording's costs.
"""

from analysis.attribution.components import COMPONENTS, COMPONENT_UNITS, REGRESSORS
from analysis.attribution.nnls import nnls

__all__ = ["COMPONENTS", "COMPONENT_UNITS", "REGRESSORS", "nnls"]
