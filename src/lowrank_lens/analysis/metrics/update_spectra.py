"""Spectra and magnitudes of the learned updates dW (docs/study.md §2, dimension 3: S4-S6).

dW = W_later - W_earlier for every matrix the `spectra` metric analyses (same `view`: the dense effective W,
CoLA's factors A and B with basis 'factors', or the study's stored tensors), between consecutive saved
checkpoints (the study's `5_ranks_updates.py`, 9 pairs per run) and init->final (the subject label says
which). Per matrix: the spectral metrics of dW (rank, effective rank, stable rank, spectral gap, #SV above
the threshold; S5, S6), then the unweighted mean across matrices, reported with the prefix `update_`.
Update magnitudes (S4, maths.spectra.update_norms):
  update_fro_mean      mean over matrices of ||dW||_F
  update_relative_mean mean over matrices of ||dW||_F / ||W_before||_F (matrices with W_before = 0, e.g.
                       a zero-initialised LoRA factor in the 'stored' view, have no ratio and are left out)
  update_global_ratio  sqrt(sum ||dW||_F^2) / sqrt(sum ||W_before||_F^2), the study's
                       total_update_to_prev_ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...errors import LensError
from ..base import Metric, Result, finite_or_nan
from ..charts import Chart, lines_by_method
from ..context import Context
from ..maths.spectra import update_norms, weight_updates
from ..subjects import Subject
from . import register
from .spectra import SPECTRAL_KEYS, SpectraConfig, analysed_matrices, spectra_result

UPDATE_NORM_KEYS = ("update_fro_mean", "update_relative_mean", "update_global_ratio")


@dataclass
class UpdateSpectraConfig(SpectraConfig):
    """The `spectra` options (view, max_elements, tol, threshold, zero_matrix), applied to dW instead of W."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except LensError as e:
            raise LensError(str(e).replace("spectra.", "update_spectra.")) from None


@register
class UpdateSpectra(Metric):
    name = "update_spectra"
    dimension = "spectra"
    subject_kind = "consecutive"
    headline = "update_effective_rank"
    Config = UpdateSpectraConfig
    needs_tokens = False
    definition = ("Spectra and size of the learned update dW = W_t+1 - W_t of each target matrix between "
                  "consecutive checkpoints (and init->final): effective/stable rank etc. of dW averaged over "
                  "matrices, mean ||dW||_F, mean ||dW||/||W|| and the global ratio (docs/study.md S4-S6).")

    def compute(self, subject: Subject, ctx: Context) -> Result:
        ca, cb = subject.checkpoints
        before, basis = analysed_matrices(ctx, ca, self.cfg.view, self.cfg.max_elements)
        after, basis_b = analysed_matrices(ctx, cb, self.cfg.view, self.cfg.max_elements)
        if basis != basis_b or set(before) != set(after):
            raise LensError(f"{subject.home.run_id}: steps {ca.step} and {cb.step} expose different matrices "
                            f"({basis} vs {basis_b}); an update needs the same matrices at both ends")
        updates = weight_updates(before, after)
        norms = update_norms(before, after)
        res = spectra_result(self.name, subject, updates, basis, self.cfg, info={"steps": [ca.step, cb.step]})
        names = res.info["matrices"]
        rel = [norms.relative[n] for n in names if math.isfinite(norms.relative[n])]
        scalars = {f"update_{k}": res.scalars[k] for k in SPECTRAL_KEYS}
        scalars |= {"update_fro_mean": float(np.mean([norms.fro[n] for n in names])),
                    "update_relative_mean": float(np.mean(rel)) if rel else math.nan,
                    "update_global_ratio": norms.global_ratio}
        res.scalars = {k: finite_or_nan(v) for k, v in scalars.items()}
        res.arrays |= {"fro": np.array([norms.fro[n] for n in names]),
                       "relative": np.array([norms.relative[n] for n in names])}
        res.info["relative_left_out"] = len(names) - len(rel)
        return res

    def charts(self, results: list[Result]) -> list[Chart]:
        """Update metrics against the later checkpoint's step, consecutive pairs only."""
        pairs = [r for r in results if r.subject.get("kind") == "consecutive"]
        if not pairs:
            return []
        keys = ("update_effective_rank", "update_stable_rank", "update_n_sv_above_ratio") + UPDATE_NORM_KEYS
        return [lines_by_method(pairs, k, k, k.replace("_", " "), x_label="training step (later checkpoint)")
                for k in keys]
