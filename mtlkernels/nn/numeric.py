"""Piecewise-linear encoding of numeric features (Gorishniy, Rubachev and Babenko, "On
Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022, section 3.2)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


#: rows encoded at once while fitting the standardisation
FIT_CHUNK = 65536
#: a component whose training standard deviation is below this is only centred
STD_FLOOR = 1e-6


class PiecewiseLinearEncoding(nn.Module):
    """``x [B, D] -> [B, D * bins]``: each column's value as its position inside ``bins``
    quantile bins of the training data.

    With column d's edges ``b_0 <= ... <= b_n`` (``n = bins``), component t of its encoding is
    0 below bin t, 1 above it and ``(x - b_{t-1}) / (b_t - b_{t-1})`` inside it; the first bin is
    not clipped below and the last not above (the paper's PLE), so values outside the training
    range extrapolate linearly. Repeated quantiles (a point mass, e.g. the zeros of capital gains)
    give bins of zero width: those are always 0, as if the repeated edges were one, and the open
    ends move to the first and last bins that have a width (a constant column encodes to zeros).
    Columns are ``[column 0's bins, column 1's, ...]``. Each component is then standardised with its mean and standard deviation on the
    training rows (a component constant there is only centred), so that a rarely-entered tail bin
    weighs like a common one in the first layer.

    The edges (the quantiles ``t / n`` of each column) and the standardisation are buffers
    learned by ``fit(train_x)`` and saved in the state dict; ``forward`` before ``fit`` or a load
    raises.
    """

    def __init__(self, columns: int, bins: int):
        super().__init__()
        if columns < 1 or bins < 1:
            raise ValueError(f"PiecewiseLinearEncoding: columns and bins must be >= 1, got {columns}, {bins}")
        self.columns, self.bins = columns, bins
        self.register_buffer("edges", torch.full((columns, bins + 1), math.nan))
        self.register_buffer("mean", torch.zeros(columns * bins))
        self.register_buffer("std", torch.ones(columns * bins))

    @property
    def output_dim(self) -> int:
        return self.columns * self.bins

    @torch.no_grad()
    def fit(self, x: Tensor, names: tuple[str, ...] | None = None) -> "PiecewiseLinearEncoding":
        """Learn the edges from training values ``x [N, D]`` (N >= 1, finite); ``names`` label
        the columns in errors."""
        if x.dim() != 2 or x.shape[1] != self.columns:
            raise ValueError(f"PiecewiseLinearEncoding.fit: x must be [N, {self.columns}], got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("PiecewiseLinearEncoding.fit: no training rows")
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            row, col = bad.nonzero()[0].tolist()
            name = names[col] if names else f"column {col}"
            raise ValueError(f"PiecewiseLinearEncoding.fit: {name!r} has the non-finite value {float(x[row, col])} "
                             f"at row {row}")
        s = x.double().sort(0).values  # [N, D]
        pos = torch.linspace(0, x.shape[0] - 1, self.bins + 1, dtype=torch.float64)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp_max(x.shape[0] - 1)
        frac = (pos - i0).unsqueeze(1)
        q = s[i0] * (1 - frac) + s[i1] * frac  # [bins + 1, D]
        self.edges.copy_(q.t().to(self.edges.dtype))
        self.mean.zero_()
        self.std.fill_(1.0)
        total = torch.zeros(self.output_dim, dtype=torch.float64)
        squares = torch.zeros(self.output_dim, dtype=torch.float64)
        for chunk in x.double().split(FIT_CHUNK):
            e = self.encode(chunk)
            total += e.sum(0)
            squares += (e * e).sum(0)
        mean = total / x.shape[0]
        std = (squares / x.shape[0] - mean * mean).clamp_min(0).sqrt()
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(torch.where(std > STD_FLOOR, std, torch.ones_like(std)).to(self.std.dtype))
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not torch.compiler.is_compiling() and bool(torch.isnan(self.edges[0, 0])):
            raise RuntimeError("PiecewiseLinearEncoding: the bin edges were never learned; call fit(train_x) "
                               "or load a state dict")
        return (self.encode(x) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encode(self, x: Tensor) -> Tensor:
        """The piecewise-linear components before standardisation: ``[B, D * bins]``."""
        edges = self.edges.to(x.dtype)
        lo, hi = edges[:, :-1], edges[:, 1:]  # [D, n]
        width = hi - lo
        wide = width > 0
        t = torch.arange(self.bins, device=x.device)
        first = torch.where(wide, t, self.bins).amin(1, keepdim=True)  # [D, 1]: the open-below bin
        last = torch.where(wide, t, -1).amax(1, keepdim=True)          # [D, 1]: the open-above bin
        inf = torch.tensor(math.inf, dtype=x.dtype, device=x.device)
        lower = torch.where(t == first, -inf, torch.zeros((), dtype=x.dtype, device=x.device))
        upper = torch.where(t == last, inf, torch.ones((), dtype=x.dtype, device=x.device))
        inside = (x.unsqueeze(-1) - lo) / torch.where(wide, width, torch.ones_like(width))  # [B, D, n]
        e = torch.minimum(torch.maximum(inside, lower), upper)
        return torch.where(wide, e, torch.zeros((), dtype=x.dtype, device=x.device)).flatten(1)
