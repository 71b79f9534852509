"""Pure tensor maths of the metrics (docs/study.md §2): no run directories, caching or plotting.

Metric plugins wrap these. Modules: loss (token batches, L(theta)), directions (random / weight-SVD /
trajectory-PCA directions), landscape (ES, DV, evaluation engine), interpolation (curves, barriers),
spectra (singular values, rank metrics, update norms), similarity (L2, cosine, CKA), curvature (HVP,
Lanczos, power iteration, Hutchinson, finite differences).
"""

from .curvature import (
    HessianOperator,
    hutchinson_trace,
    lanczos,
    model_hessian,
    power_iteration,
    second_derivative_at_zero,
)
from .directions import (
    SVD_VARIANTS,
    normalize_direction,
    random_direction,
    random_directions,
    trajectory_pca,
    weight_svd_directions,
)
from .interpolation import interpolation_barrier, interpolation_curve
from .landscape import (
    centre_index,
    direction_variance,
    expected_sharpness,
    landscape_summary,
    losses_along_directions,
    losses_along_directions_reference,
)
from .loss import mean_nll, prepare_batches
from .similarity import LayerwiseSimilarity, SimilarityAccumulator, activation_similarity, linear_cka
from .spectra import mean_metrics, singular_values, spectral_metrics, update_norms, weight_updates

__all__ = [
    "SVD_VARIANTS", "HessianOperator", "LayerwiseSimilarity", "SimilarityAccumulator", "activation_similarity",
    "centre_index", "direction_variance", "expected_sharpness", "hutchinson_trace", "interpolation_barrier",
    "interpolation_curve", "lanczos", "landscape_summary", "linear_cka", "losses_along_directions",
    "losses_along_directions_reference", "mean_metrics", "mean_nll", "model_hessian", "normalize_direction",
    "power_iteration", "prepare_batches", "random_direction", "random_directions", "second_derivative_at_zero",
    "singular_values", "spectral_metrics", "trajectory_pca", "update_norms", "weight_svd_directions",
    "weight_updates",
]
