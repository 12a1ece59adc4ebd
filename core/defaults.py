"""The reward math's defaults, one home each: the request schemas, `core.rewards`, both
clients, the methods' configs, the integrations and the presets all read them here."""

from __future__ import annotations

# λ of the calibrated reward R = λ·R_I + (1−λ)·R_T (CSR eq. 4): CSR's value (appendix A.1).
LAMBDA = 0.9

# R_I = max(scale·cos, 0) (CSR eq. 3): CLIP's logit scale.
CLIP_SCALE = 100.0

# β of the DPO implicit reward β·(log π_policy − log π_ref) (SBSPO eq. 2-3).
IMPLICIT_BETA = 0.1

# α of the official CSR code's rank fusion (1−α)·rank_T + α·rank_I (step3.sh CLIP_ALPHA).
FUSED_RANK_ALPHA = 0.9
