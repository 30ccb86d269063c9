"""Expert-by-expert, gate-by-gate forward passes of the models, written literally from the
equations of ALGORITHMS.md Part 1 with ``F.linear`` and ``softmax`` on the models' own
parameters: the oracle the grouped/fused models are tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlkernels.nn.grouped import GroupedMLP


def group_mlp(mlp: GroupedMLP, g: int, x: Tensor, gates: list[Tensor | None] | None = None) -> Tensor:
    """Group g's MLP of a GroupedMLP on ``x [B, in]`` (no batch norm, eval-mode dropout); layer l's
    output times ``gates[l] [B, width_l]`` where given (PPNet)."""
    if mlp.norms is not None:
        raise ValueError("reference models: batch norm is not modelled")
    h = x
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        h = F.linear(h, layer.group_weight(g), None if layer.bias is None else layer.bias[g])
        if (i < last or mlp.last_activation) and mlp.activation == "relu":
            h = torch.relu(h)
        if gates is not None and gates[i] is not None:
            h = h * gates[i]
    return h


def gate_nu(nets, g: int, prior: Tensor) -> list[Tensor]:
    """Group g's Gate NU of each layer: ``2 sigmoid(W2 relu(W1 p + b1) + b2)`` per layer, [B, w_l]."""
    return [2 * torch.sigmoid(group_mlp(net, g, prior)) for net in nets.nets]


def prior(x: Tensor, columns: Tensor, general: Tensor) -> Tensor:
    return torch.cat([x[:, columns.tolist()], general.detach()], dim=1)


def gate_mixture(gates, g: int, visible: list[int], x: Tensor, experts: list[Tensor]) -> Tensor:
    """``sum_{e in visible} softmax(W_g x + b_g)_e * experts[e]``."""
    w, b = gates.gate_parameters(g)
    probs = torch.softmax(F.linear(x, w, b), dim=-1)
    return sum(probs[:, i:i + 1] * experts[e] for i, e in enumerate(visible))


def towers(model, inputs: list[Tensor]) -> Tensor:
    return torch.cat([group_mlp(model.towers.mlp, t, inputs[t]) for t in range(len(inputs))], dim=1)


def mmoe(model, x: Tensor) -> Tensor:
    """MMoE / OMoE: ``y_t = tower_t(sum_e g^t(x)_e f_e(x))`` (OMoE: one gate for all towers)."""
    X = model.num_experts
    p = prior(x, model.expert_gate_columns, x) if model.expert_gates is not None else None
    experts = [group_mlp(model.experts, e, x, None if p is None else gate_nu(model.expert_gates, e, p))
               for e in range(X)]
    mixtures = [gate_mixture(model.gates, g, list(range(X)), x, experts) for g in range(model.gates.num_gates)]
    if len(mixtures) == 1:
        mixtures = mixtures * model.num_tasks
    return towers(model, mixtures)


def shared_bottom(model, x: Tensor) -> Tensor:
    h = group_mlp(model.bottom, 0, x)
    return towers(model, [h] * model.num_tasks)


def dselect_k(model, x: Tensor) -> Tensor:
    """DSelect-k as ALGORITHMS.md 1.9 states it, gate by gate, selector by selector, expert by
    expert: ``r_i = prod_l (S(z_l) if bit l of i else 1 - S(z_l))``, ``q = sum_j softmax(alpha)_j r_j``,
    ``y_t = tower_t(sum_i q_ti f_i(x))``."""
    gates = model.gates
    X, k, m, T = model.num_experts, gates.k, gates.bits, model.num_tasks
    experts = [group_mlp(model.experts, e, x) for e in range(X)]
    if gates.z is not None:
        z = gates.z.unsqueeze(0).expand(x.shape[0], T, k, m)
        alpha = gates.alpha.unsqueeze(0).expand(x.shape[0], T, k)
    else:
        z = F.linear(x, gates.z_map.weight, gates.z_map.bias).view(x.shape[0], T, k, m)
        alpha = F.linear(x, gates.alpha_map.weight, gates.alpha_map.bias).view(x.shape[0], T, k)
    g = gates.gamma

    def S(t):
        inner = -2 * t ** 3 / g ** 3 + 3 * t / (2 * g) + 0.5
        return torch.where(t <= -g / 2, torch.zeros_like(t), torch.where(t >= g / 2, torch.ones_like(t), inner))

    mixtures = []
    for t in range(T):
        a = torch.softmax(alpha[:, t], dim=-1)
        mix = 0
        for i in range(X):
            q_i = 0
            for j in range(k):
                r = torch.ones_like(a[:, j])
                for bit in range(m):
                    s = S(z[:, t, j, bit])
                    r = r * (s if (i >> bit) & 1 else 1 - s)
                q_i = q_i + a[:, j] * r
            mix = mix + q_i.unsqueeze(1) * experts[i]
        mixtures.append(mix)
    return towers(model, mixtures)


def ple(model, x: Tensor) -> Tensor:
    """PLE as ALGORITHMS.md 1.5 states it. Experts of a level are ordered task 0's, task 1's,
    ..., shared; task gate k sees task k's experts then the shared ones; the shared gate
    (levels 1..N-1) sees all experts of the level."""
    T = model.num_tasks
    counts, m_s = model.task_experts, model.shared_experts
    starts = [sum(counts[:k]) for k in range(T)]
    shared_idx = list(range(sum(counts), sum(counts) + m_s))
    task_in, shared_in = [x] * T, x
    p = prior(x, model.expert_gate_columns, x) if model.expert_gate_columns.numel() else None

    def expert(level, e, inp):  # expert e of a level, its PPNet gates applied if any
        nets, g = level.expert_gate_nus_of(e)
        return group_mlp(*level.expert(e), inp, None if nets is None else gate_nu(nets, g, p))

    for j, level in enumerate(model.levels):
        experts = []
        for k in range(T):
            experts += [expert(level, starts[k] + i, task_in[k]) for i in range(counts[k])]
        experts += [expert(level, e, shared_in) for e in shared_idx]
        new_task_in = [gate_mixture(level.gates, k, list(range(starts[k], starts[k] + counts[k])) + shared_idx,
                                    task_in[k], experts) for k in range(T)]
        if j < len(model.levels) - 1 and m_s > 0:  # the shared gate (no shared expert: none)
            shared_in = gate_mixture(level.gates, T, list(range(len(experts))), shared_in, experts)
        task_in = new_task_in
    return towers(model, task_in)


def pepnet(model, x: Tensor) -> Tensor:
    """PEPNet: ``h = x * 2 sigmoid(GateNU(x_domain (+) sg(x)))`` (EPNet, if any); tower t's hidden
    layer l times ``2 sigmoid(GateNU_{t,l}(x_prior (+) sg(h)))`` (PPNet)."""
    h = x
    if model.epnet is not None:
        (gate,) = gate_nu(model.epnet, 0, prior(x, model.domain_columns, x))
        h = x * gate
    p = prior(x, model.prior_columns, h)
    return torch.cat([group_mlp(model.towers.mlp, t, h, [*gate_nu(model.task_gates, t, p), None])
                      for t in range(model.num_tasks)], dim=1)
