"""Models and balancing methods by name, from the settings of a run (the CLI's ``--model`` and
``--method``): one place that knows every name."""
from __future__ import annotations

from typing import Any

from torch import nn

from mtlkernels import balance
from mtlkernels import nn as mnn
from mtlkernels.data.errors import DataError

MODELS = ("shared-bottom", "omoe", "mmoe", "cgc", "ple", "dselect-k", "pepnet", "esmm", "esm2", "aitm")
METHODS = ("ew", "uw", "gradnorm", "dwa", "rlw", "mgda", "mgda-ub", "pe-ltr", "pcgrad", "gradvac", "imtl-g",
           "aligned-mtl", "upgrad", "dualproj", "cagrad", "nash-mtl", "famo")
#: methods that take the task gradients at the shared representation (MGDA-UB style)
REPRESENTATION_METHODS = ("mgda-ub",)


class ConfigError(ValueError):
    """A setting (flag or config key) that cannot be used; the CLI prints it as one line."""


class TrainingError(RuntimeError):
    """A run that cannot go on (a NaN or Inf loss or gradient); the CLI prints it as one line."""


def is_funnel(schema) -> bool:
    """Every task after the previous one, on the entire space (click -> purchase -> ...)."""
    t = schema.tasks
    return all(t[k].after == t[k - 1].name and not t[k].conditional for k in range(1, len(t)))


def check_model_fits(name: str, schema) -> None:
    """Entire-space models need their funnel: ESMM (click, conversion after click), ESM2 (click,
    DAction and purchase after click); AITM needs binary tasks (its calibrator, a funnel)."""
    tasks = schema.tasks
    kinds = {t.kind for t in tasks}
    if name in ("esmm", "esm2", "aitm") and kinds != {"binary"}:
        raise ConfigError(f"--model {name}: every task must be binary, the data has {[t.kind for t in tasks]}")
    if name == "esmm" and not (len(tasks) == 2 and tasks[1].after == tasks[0].name and not tasks[1].conditional):
        raise ConfigError("--model esmm needs 2 tasks: a click and a conversion with after = the click, on the "
                          f"entire space (not conditional); the data has {schema.task_names}")
    if name == "esm2" and not (len(tasks) == 3 and all(t.after == tasks[0].name and not t.conditional
                                                       for t in tasks[1:])):
        raise ConfigError("--model esm2 needs 3 tasks: click, then DAction and purchase each with after = the "
                          f"click; the data has {schema.task_names}")


def build_model(name: str, features: mnn.FeatureSchema, schema, s: dict[str, Any]) -> mnn.WithFeatures:
    """The model ``name`` fed by a ``FeatureEmbedding`` of ``features``, for the tasks of the data
    ``schema``. Settings used: ``experts``, ``expert_hidden``, ``tower_hidden``, ``bottom_hidden``,
    ``task_experts``, ``shared_experts``, ``levels``, ``dselect_k``, ``dselect_gates``, ``dselect_entropy``,
    ``gate_fields``, ``domain_fields``, ``gate_hidden``, ``dropout``, ``batch_norm``. PEPNet's towers are
    ``bottom_hidden + tower_hidden`` deep (every hidden layer gated), its gate fields default to every
    sparse and bag field. AITM gets its
    behavioural calibrator (alpha 0.6) only when the tasks form a funnel (``is_funnel``); on other
    tasks (Census' income, never_married) it keeps the information transfer and drops the
    calibrator, whose premise (a later step is never likelier) does not hold there."""
    num_tasks = len(schema.tasks)
    d = features.output_dim
    kw = {"dropout": s["dropout"], "batch_norm": s["batch_norm"]}
    def columns(names, flag):
        try:
            return features.columns(names, flag)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    gate_hidden = s["gate_hidden"] or None
    if name == "shared-bottom":
        model = mnn.SharedBottom(d, num_tasks, s["bottom_hidden"], s["tower_hidden"], **kw)
    elif name in ("mmoe", "omoe"):
        if name == "mmoe":
            model = mnn.MMoE(d, num_tasks, s["experts"], s["expert_hidden"], s["tower_hidden"],
                             expert_gate_columns=columns(s["gate_fields"], "--gate-fields"),
                             expert_gate_hidden=gate_hidden, **kw)
        else:
            model = mnn.OMoE(d, num_tasks, s["experts"], s["expert_hidden"], s["tower_hidden"], **kw)
    elif name in ("cgc", "ple"):
        levels = 1 if name == "cgc" else s["levels"]
        model = mnn.PLE(d, num_tasks, s["task_experts"], s["shared_experts"], s["expert_hidden"],
                        s["tower_hidden"], num_levels=levels,
                        expert_gate_columns=columns(s["gate_fields"], "--gate-fields"), expert_gate_hidden=gate_hidden,
                        **kw)
    elif name == "dselect-k":
        if s["dselect_k"] > s["experts"]:
            raise ConfigError(f"--dselect-k {s['dselect_k']}: more selected experts than --experts {s['experts']}")
        model = mnn.DSelectK(d, num_tasks, s["experts"], s["dselect_k"], s["expert_hidden"], s["tower_hidden"],
                             per_example=s["dselect_gates"] == "per-example", entropy_weight=s["dselect_entropy"], **kw)
    elif name == "pepnet":
        if not s["gate_fields"] and not (features.sparse or features.bags):
            raise ConfigError("--model pepnet: the data has no sparse or bag field to feed its gates")
        gate_fields = s["gate_fields"] or [f.name for f in (*features.sparse, *features.bags)]
        model = mnn.PEPNet(d, num_tasks, columns(gate_fields, "--gate-fields"),
                           columns(s["domain_fields"], "--domain-fields"), (*s["bottom_hidden"], *s["tower_hidden"]),
                           gate_hidden=gate_hidden, **kw)
    elif name == "esmm":
        model = mnn.ESMM(d, s["bottom_hidden"], **kw)
    elif name == "esm2":
        model = mnn.ESM2(d, s["bottom_hidden"], **kw)
    elif name == "aitm":
        model = mnn.AITM(d, num_tasks, (*s["bottom_hidden"], s["tower_hidden"][-1]), dropout=s["dropout"],
                         calibrator_alpha=0.6 if is_funnel(schema) else 0.0)
    else:
        raise ConfigError(f"--model: unknown model {name!r}; choose from {', '.join(MODELS)}")
    return mnn.WithFeatures(mnn.FeatureEmbedding(features), model)


def gradnorm_layer(model: mnn.WithFeatures) -> list[nn.Parameter]:
    """GradNorm's W: the last shared layer (the experts' or the bottom's last layer; the
    embedding table for models whose only shared part is the embedding)."""
    inner = model.model
    if isinstance(inner, mnn.SharedBottom):
        layer = inner.bottom.layers[-1]
    elif isinstance(inner, mnn.MMoE):
        layer = inner.experts.layers[-1]
    elif isinstance(inner, mnn.PLE) and inner.shared_experts > 0:  # the last level's shared experts
        last = inner.levels[-1]
        layer = (last.shared if last.shared is not None else last.experts).layers[-1]
    else:  # no shared layer in the model (a PLE without shared experts is task specific throughout)
        params = list(model.features.parameters())
        if not params:
            raise ConfigError("--method gradnorm: the model has no shared layer to balance at (this model shares only "
                              "its embeddings, and the data has none)")
        return params
    return list(layer.parameters())


def build_method(name: str, model: mnn.WithFeatures, num_tasks: int, s: dict[str, Any]) -> nn.Module:
    """The balancing method ``name`` with its paper defaults (see each class); settings used:
    ``seed`` (PCGrad/GradVac task orders, RLW's weights), ``lower_bounds`` (PE-LTR, default ``1 / (2T)`` each)."""
    if name == "ew":
        return balance.EW()
    if name == "uw":
        return balance.UncertaintyWeighting(num_tasks)
    if name == "gradnorm":
        return balance.GradNorm(num_tasks, layer=gradnorm_layer(model))
    if name == "dwa":
        return balance.DWA(num_tasks)
    if name == "rlw":
        return balance.RLW(seed=s["seed"])
    if name == "imtl-g":
        return balance.IMTLG()
    if name == "aligned-mtl":
        return balance.AlignedMTL()
    if name == "upgrad":
        return balance.UPGrad()
    if name == "dualproj":
        return balance.DualProj()
    if name == "cagrad":
        return balance.CAGrad()
    if name == "nash-mtl":
        return balance.NashMTL()
    if name == "famo":
        return balance.FAMO(num_tasks)
    if name in ("mgda", "mgda-ub"):
        return balance.MGDA("loss+")
    if name == "pe-ltr":
        bounds = s.get("lower_bounds") or [1.0 / (2 * num_tasks)] * num_tasks
        if len(bounds) != num_tasks:
            raise ConfigError(f"lower_bounds: {len(bounds)} bounds for {num_tasks} tasks")
        try:
            return balance.PELTR(bounds)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if name == "pcgrad":
        return balance.PCGrad(seed=s["seed"])
    if name == "gradvac":
        return balance.GradVac(seed=s["seed"])
    raise ConfigError(f"--method: unknown method {name!r}; choose from {', '.join(METHODS)}")


__all__ = ["ConfigError", "DataError", "METHODS", "MODELS", "build_method", "build_model", "check_model_fits"]
