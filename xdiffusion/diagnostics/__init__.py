"""Diagnostics of generated fields against a reference: Herbert (2023), Chapter 4.

xarray in, xarray out; no torch. Everything that can stay lazy on dask input does (spectra,
histograms with given bins, quantiles, bias, scores); what cannot is said in the docstring.
Outputs are built fresh: a PSD never inherits the input's ``units: mm h-1``. Values are
pooled over every dimension that the diagnostic does not keep, so an ensemble dimension
``realization`` (or any other sample dimension) is simply more data.

Conventions
-----------
- Frequency density (Fig. 4.2): counts / (number of finite values × bin width), units the
  inverse of the input's; ``log=True`` gives log10 of it (units ``1``, empty bins NaN).
- Spectra (Fig. 4.3): pysteps' ``rapsd`` convention. P = |F|² / N of the mean-removed field
  (F its DFT, N its number of cells), so by Parseval Σ_modes P = Σ (x − x̄)² = N · var(x);
  units are the input's squared. The spatial PSD averages P over rings round(|k| / Δk) = r,
  r = 1 … ceil(L/2) − 1 (L the longer side, Δk = 1 / its length); the temporal one over
  ±f, up to and including the Nyquist frequency. The coordinates ``wavenumber_modes`` and
  ``frequency_modes`` count the modes of each ring, so Σ_r P(r) · modes(r) gives back
  N · var(x) (up to the spatial corners beyond the last ring).
- Quantiles (Fig. 4.4): Herbert (2023)'s set Q = {1 − 10^−n1 + n2 · 10^−(n1+1)}, n1 = 1 … 7,
  n2 = 1 … 9 (0.91 … 0.9999999, as in the reference notebooks), linear interpolation.
"""

from xdiffusion.diagnostics._util import MEMBER_DIM
from xdiffusion.diagnostics.distributions import (
    LOW_END_QUANTILE,
    histogram,
    mean_normalised_bias,
    qq,
    seed_quantiles,
)
from xdiffusion.diagnostics.ensemble import crps, rank_histogram, spread_skill
from xdiffusion.diagnostics.learning import history_dataset, smoothed_loss
from xdiffusion.diagnostics.report import evaluate
from xdiffusion.diagnostics.spectra import lag_autocorrelation, spatial_psd, temporal_psd

__all__ = [
    "LOW_END_QUANTILE",
    "MEMBER_DIM",
    "crps",
    "evaluate",
    "histogram",
    "history_dataset",
    "lag_autocorrelation",
    "mean_normalised_bias",
    "qq",
    "rank_histogram",
    "seed_quantiles",
    "smoothed_loss",
    "spatial_psd",
    "spread_skill",
    "temporal_psd",
]
