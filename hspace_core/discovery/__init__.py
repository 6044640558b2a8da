"""Direction discovery in h-space (ALGORITHMS.md §1.4-1.7, §2.4-2.6, §3), pure torch.

- :mod:`.pca`: principal directions of captured h, in memory or streamed (Haas et al. 2024).
- :mod:`.jacobian`: matrix-free Jacobian spectra, image-specific directions (Haas et al. 2024).
- :mod:`.pullback`: the encoder's pullback basis, x-space guidance, transport, geometry (Park et al. 2023).
- :mod:`.supervised`: mean-difference and probe directions, joint disentangling projection (Haas et al. 2024).
- :mod:`.attribute`: attribute directions freed of the starting noise and of the class (stratified, noise residual).
- :mod:`.asyrp`: f_t, its CLIP-guided training and the editing intervals (Kwon et al. 2023).

See docs/DISCOVERY.md for how each method works and what it costs.
"""
from .asyrp import (DeltaBlock, DirectionalCLIPLoss, EditingCurves, editing_curves, global_delta_h,
                    select_t_boost, select_t_edit, train_delta_block)
from .jacobian import (JacobianOperator, JacobianSVD, jacobian_directions, power_iteration_deflation,
                       subspace_iteration, trajectory_jacobian_directions)
from .pca import PCAResult, pca_directions
from .attribute import attribute_direction, noise_residual_scores, noise_statistics, stratified_mean_difference
from .pullback import (PullbackBasis, curvedness, grassmann_distance, pullback_basis, transport_direction,
                       x_space_guidance)
from .supervised import disentangle, linear_probe_direction, mean_difference, supervised_direction, top_bottom_k

__all__ = [
    "DeltaBlock", "DirectionalCLIPLoss", "EditingCurves", "editing_curves", "global_delta_h", "select_t_boost",
    "select_t_edit", "train_delta_block", "JacobianOperator", "JacobianSVD", "jacobian_directions",
    "power_iteration_deflation", "subspace_iteration", "trajectory_jacobian_directions", "PCAResult",
    "pca_directions", "PullbackBasis", "curvedness", "grassmann_distance", "pullback_basis", "transport_direction",
    "x_space_guidance", "disentangle", "linear_probe_direction", "mean_difference", "supervised_direction",
    "top_bottom_k", "attribute_direction", "noise_residual_scores", "noise_statistics", "stratified_mean_difference",
]
