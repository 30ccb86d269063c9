"""ESMM and ESM2: entire-space conversion models (ALGORITHMS.md 1.6-1.7).

Both return raw tower logits ``[B, K]``; the composed probabilities and the losses are
computed in log space by the functions here, never as ratios of probabilities.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkernels.nn.base import MultiTaskModel
from mtlkernels.nn.losses import bce_from_logits, check_binary_labels, check_funnel, logit_from_log_prob
from mtlkernels.nn.towers import Towers


class ESMM(MultiTaskModel):
    """Entire Space Multi-task Model (Ma et al., SIGIR 2018).

    Two towers on the shared input: CTR and CVR. ``forward`` returns logits ``[B, 2]``
    (column 0 pCTR, column 1 pCVR = p(conversion | click)); ``pCTCVR = pCTR * pCVR``.
    Shared: whatever produces ``x`` (the embeddings) and the CTR tower, which both tasks' losses
    reach (click directly, conversion through pCTCVR); task specific: the CVR tower.
    Representation: ``x`` itself. Official tower widths (XDL): 200 -> 80.
    """

    _task_specific = ("cvr_tower",)

    def __init__(self, input_dim: int, tower_hidden: Sequence[int] = (200, 80), *, batch_norm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        kw = dict(shared_input=True, batch_norm=batch_norm, dropout=dropout)
        self.ctr_tower = Towers(1, input_dim, tower_hidden, **kw)
        self.cvr_tower = Towers(1, input_dim, tower_hidden, **kw)

    def forward(self, x: Tensor, return_representation: bool = False):
        logits = torch.cat([self.ctr_tower(x), self.cvr_tower(x)], dim=1)
        return (logits, x) if return_representation else logits

    @staticmethod
    def predictions(logits: Tensor) -> dict[str, Tensor]:
        """``{"ctr", "cvr", "ctcvr"}`` probabilities ``[B]`` from the logits."""
        log_ctr, log_cvr = F.logsigmoid(logits[:, 0]), F.logsigmoid(logits[:, 1])
        return {"ctr": log_ctr.exp(), "cvr": log_cvr.exp(), "ctcvr": (log_ctr + log_cvr).exp()}

    @staticmethod
    def task_logits(logits: Tensor) -> Tensor:
        """``[B, 2]``: the CTR logit and the logit of ``pCTCVR = pCTR * pCVR`` (log space), the
        predictions of the labels (click, conversion) on every impression."""
        log_ctcvr = F.logsigmoid(logits[:, 0]) + F.logsigmoid(logits[:, 1])
        return torch.stack([logits[:, 0], logit_from_log_prob(log_ctcvr)], dim=1)

    @classmethod
    def loss(cls, logits: Tensor, click: Tensor, conversion: Tensor) -> Tensor:
        """Per-task losses ``[2]`` over all impressions: BCE(click, pCTR) and
        BCE(conversion, pCTR * pCVR). No direct CVR loss (the paper's point). A conversion
        without a click is a ValueError. Means over the batch; sum them (or hand them to a
        balancing method)."""
        B = logits.shape[0]
        check_binary_labels("click", click, B)
        check_binary_labels("conversion", conversion, B)
        check_funnel("conversion", conversion, "click", click)
        return bce_from_logits(cls.task_logits(logits), torch.stack([click, conversion], 1))


class ESM2(MultiTaskModel):
    """ESM2 (Wen et al., SIGIR 2020), the decomposition of the paper as ALGORITHMS.md 1.7 states it:

    four towers ``y1 = p(click)``, ``y2 = p(DAction | click)``, ``y3 = p(buy | click, no DAction)``,
    ``y4 = p(buy | click, DAction)``; ``pCTAVR = y1 y2``, ``pCVR = y2 y4 + (1 - y2) y3`` (a convex
    combination, so in [0, 1]), ``pCTCVR = y1 pCVR``. The two public re-implementations deviate
    from this (ALGORITHMS.md Part 6 item 13); we follow the paper's path impression -> click ->
    {DAction | OAction} -> purchase because its probabilities are consistent by construction.
    ``forward`` returns logits ``[B, 4]`` (y1..y4).

    Shared: what produces ``x`` and the y1 and y2 towers (y1 reaches all three tasks, y2
    pCTAVR's and pCTCVR's); task specific: the y3 and y4 towers (pCTCVR only).
    """

    _task_specific = ("purchase_towers",)

    def __init__(self, input_dim: int, tower_hidden: Sequence[int] = (200, 80), *, batch_norm: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        kw = dict(shared_input=True, batch_norm=batch_norm, dropout=dropout)
        self.action_towers = Towers(2, input_dim, tower_hidden, **kw)    # y1, y2
        self.purchase_towers = Towers(2, input_dim, tower_hidden, **kw)  # y3, y4

    def forward(self, x: Tensor, return_representation: bool = False):
        logits = torch.cat([self.action_towers(x), self.purchase_towers(x)], dim=1)
        return (logits, x) if return_representation else logits

    @staticmethod
    def log_probs(logits: Tensor) -> dict[str, Tensor]:
        """Log-probabilities ``[B]`` of ``ctr``, ``ctavr``, ``cvr`` and ``ctcvr``."""
        l1, l2 = F.logsigmoid(logits[:, 0]), F.logsigmoid(logits[:, 1])
        l2_not = F.logsigmoid(-logits[:, 1])
        l3, l4 = F.logsigmoid(logits[:, 2]), F.logsigmoid(logits[:, 3])
        log_cvr = torch.logaddexp(l2 + l4, l2_not + l3)
        return {"ctr": l1, "ctavr": l1 + l2, "cvr": log_cvr, "ctcvr": l1 + log_cvr}

    @classmethod
    def predictions(cls, logits: Tensor) -> dict[str, Tensor]:
        return {k: v.exp() for k, v in cls.log_probs(logits).items()}

    @staticmethod
    def task_logits(logits: Tensor) -> Tensor:
        """``[B, 3]`` logits of pCTR, pCTAVR and pCTCVR (log space): the predictions of the
        labels (click, DAction, purchase) on every impression."""
        lp = ESM2.log_probs(logits)
        return torch.stack([logits[:, 0], logit_from_log_prob(lp["ctavr"]), logit_from_log_prob(lp["ctcvr"])], 1)

    @classmethod
    def loss(cls, logits: Tensor, click: Tensor, daction: Tensor, purchase: Tensor) -> Tensor:
        """Per-task losses ``[3]`` over all impressions: BCE(click, pCTR), BCE(DAction, pCTAVR),
        BCE(purchase, pCTCVR); batch means, weights 1 as in the paper. A DAction or a purchase
        without a click is a ValueError."""
        B = logits.shape[0]
        for name, label in (("click", click), ("daction", daction), ("purchase", purchase)):
            check_binary_labels(name, label, B)
        check_funnel("daction", daction, "click", click)
        check_funnel("purchase", purchase, "click", click)
        return bce_from_logits(cls.task_logits(logits), torch.stack([click, daction, purchase], 1))
