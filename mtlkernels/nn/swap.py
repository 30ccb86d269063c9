"""Swap-in: turn an existing expert-loop MMoE/PLE (written like torch-rechub's or
DeepCTR-Torch's: a ModuleList of expert MLPs, one softmax gate module per task, one tower per
task) into the grouped/fused model here, with the same weights and so the same function.

    from mtlkernels.nn.swap import mmoe_from, ple_from
    fast = mmoe_from(user.experts, user.gates, user.towers)   # an mtlkernels.nn.MMoE
    logits = fast(x)        # == logit of user(x); the user's towers may end in a sigmoid

Supported layers inside experts, gates and towers: ``nn.Linear``, ``nn.ReLU``, ``nn.Dropout``,
``nn.Identity``, a final ``nn.Softmax`` in a gate, a final ``nn.Sigmoid`` in a tower (dropped:
mtlkernels models return logits). Anything else raises ValueError naming the layer.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mtlkernels.nn.grouped import GroupedMLP
from mtlkernels.nn.mmoe import MMoE
from mtlkernels.nn.ple import PLE


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if len(list(m.children())) == 0]


def _parse_mlp(module: nn.Module, *, final: type | None = None) -> tuple[list[nn.Linear], bool, float]:
    """(Linear layers, ReLU after the last Linear?, dropout p) of a Linear/ReLU/Dropout stack."""
    linears, relu_after_last, dropout = [], False, 0.0
    leaves = _leaves(module)
    if final is not None and leaves and isinstance(leaves[-1], final):
        leaves = leaves[:-1]
    for layer in leaves:
        if isinstance(layer, nn.Linear):
            linears.append(layer)
            relu_after_last = False
        elif isinstance(layer, nn.ReLU):
            if not linears:
                raise ValueError("swap: a ReLU before the first Linear is not supported")
            relu_after_last = True
        elif isinstance(layer, nn.Dropout):
            dropout = layer.p
        elif not isinstance(layer, nn.Identity):
            raise ValueError(f"swap: unsupported layer {type(layer).__name__} in {type(module).__name__}; "
                             "supported: Linear, ReLU, Dropout, Identity")
    if not linears:
        raise ValueError(f"swap: {type(module).__name__} has no Linear layer")
    return linears, relu_after_last, dropout


@torch.no_grad()
def _copy_into(grouped: GroupedMLP, mlps: list[list[nn.Linear]]) -> None:
    for i, layer in enumerate(grouped.layers):
        for g, linears in enumerate(mlps):
            src = linears[i]
            layer.group_weight(g).copy_(src.weight)
            if layer.bias is not None:
                layer.bias[g].copy_(src.bias if src.bias is not None else torch.zeros_like(layer.bias[g]))


def _structure(modules: Sequence[nn.Module], what: str, final: type | None = None):
    parsed = [_parse_mlp(m, final=final) for m in modules]
    widths = [[lin.out_features for lin in p[0]] for p in parsed]
    if any(w != widths[0] for w in widths) or len({p[1] for p in parsed}) != 1:
        raise ValueError(f"swap: all {what} must have the same layer widths and activations, got {widths}")
    return [p[0] for p in parsed], widths[0], parsed[0][1], parsed[0][2]


def _gate_linears(gates: Sequence[nn.Module]) -> list[nn.Linear]:
    linears = []
    for gate in gates:
        lin, relu, _ = _parse_mlp(gate, final=nn.Softmax)
        if len(lin) != 1 or relu:
            raise ValueError("swap: a gate must be one Linear (optionally followed by Softmax)")
        linears.append(lin[0])
    return linears


@torch.no_grad()
def _copy_gates(target, linears: list[nn.Linear]) -> None:
    for g, lin in enumerate(linears):
        w, b = target.gate_parameters(g)
        w.copy_(lin.weight)
        b.copy_(lin.bias if lin.bias is not None else torch.zeros_like(b))


def mmoe_from(experts: Sequence[nn.Module], gates: Sequence[nn.Module], towers: Sequence[nn.Module]) -> MMoE:
    """An ``MMoE`` computing what the expert loop computes: experts ``experts[e](x)``, task t's
    mixture ``sum_e softmax(gates[t](x))_e experts[e](x)``, logits ``towers[t](mixture)``."""
    expert_linears, expert_widths, expert_relu, expert_dropout = _structure(experts, "experts")
    tower_linears, tower_widths, tower_relu, _ = _structure(towers, "towers", final=nn.Sigmoid)
    if tower_widths[-1] != 1 or tower_relu:
        raise ValueError("swap: each tower must end in Linear(..., 1) (optionally then Sigmoid)")
    if not expert_relu:
        raise ValueError("swap: experts must end in ReLU (as GroupedMLP experts do)")
    gate_linears = _gate_linears(gates)
    if len(gate_linears) != len(tower_linears):
        raise ValueError(f"swap: {len(gate_linears)} gates for {len(tower_linears)} towers")
    in_features = expert_linears[0][0].in_features
    model = MMoE(in_features, len(towers), len(experts), expert_widths, tower_widths[:-1], dropout=expert_dropout)
    ref = expert_linears[0][0].weight
    model.to(device=ref.device, dtype=ref.dtype)
    _copy_into(model.experts, expert_linears)
    _copy_gates(model.gates, gate_linears)
    _copy_into(model.towers.mlp, tower_linears)
    return model


def ple_from(levels: Sequence[dict], towers: Sequence[nn.Module]) -> PLE:
    """A ``PLE`` from per-level lists of modules. Each level is a dict with
    ``task_experts`` (T lists of expert MLPs), ``shared_experts`` (a list), ``task_gates``
    (T gate modules, gate k over task k's experts then the shared ones) and ``shared_gate``
    (a gate over all experts, task 0's first, then the shared ones; None at the last level, and
    dropped when there are no shared experts, since no expert reads its mixture)."""
    first = levels[0]
    T = len(first["task_experts"])
    counts = [len(e) for e in first["task_experts"]]
    m_s = len(first["shared_experts"])
    all_experts = [e for lvl in levels for e in [*sum(lvl["task_experts"], []), *lvl["shared_experts"]]]
    expert_linears, expert_widths, expert_relu, expert_dropout = _structure(all_experts, "experts")
    if not expert_relu:
        raise ValueError("swap: experts must end in ReLU (as GroupedMLP experts do)")
    tower_linears, tower_widths, tower_relu, _ = _structure(towers, "towers", final=nn.Sigmoid)
    if tower_widths[-1] != 1 or tower_relu or len(towers) != T:
        raise ValueError(f"swap: need {T} towers each ending in Linear(..., 1)")
    in_features = expert_linears[0][0].in_features
    model = PLE(in_features, T, counts, m_s, expert_widths, tower_widths[:-1], num_levels=len(levels),
                dropout=expert_dropout)
    ref = expert_linears[0][0].weight
    model.to(device=ref.device, dtype=ref.dtype)
    per_level = sum(counts) + m_s
    for j, (lvl, target) in enumerate(zip(levels, model.levels)):
        if [len(e) for e in lvl["task_experts"]] != counts or len(lvl["shared_experts"]) != m_s:
            raise ValueError(f"swap: level {j} has different expert counts than level 0")
        gates = list(lvl["task_gates"])
        if j < len(levels) - 1 and m_s > 0:  # without shared experts a shared gate feeds nothing: dropped
            if lvl.get("shared_gate") is None:
                raise ValueError(f"swap: inner level {j} needs a shared_gate")
            gates.append(lvl["shared_gate"])
        level_linears = expert_linears[j * per_level:(j + 1) * per_level]
        _copy_into(target.experts, level_linears[:target.num_grouped])
        if target.shared is not None:
            _copy_into(target.shared, level_linears[target.num_grouped:])
        _copy_gates(target.gates, _gate_linears(gates))
    _copy_into(model.towers.mlp, tower_linears)
    return model
