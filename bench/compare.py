"""mtlkernels against the libraries users would otherwise pick, on the same work in the same run:
markdown tables of median times (interleaved runs), ratios, and an agreement column, so that
speed is never bought with a different answer.

    PYTHONPATH=.peers python bench/compare.py [--sections step aggregation models metrics census]
        [--P 1e5 1e6 1e7] [--T 2 4 8 16] [--threads 1 2] [--reps 5] [--epochs 10] [--seeds 0,1,2]

Peers: ``bash bench/install_peers.sh [DIR]`` installs them (default ``.peers``) next to torch
2.13.0 CPU without their dependencies, which would pull another torch. A missing peer is
reported, not fatal.

Sections:

- ``step``: a whole training step (forward, the method's backward, SGD step) of the same MMoE
  (512 inputs, 8 experts [256, 128], 4 tasks [64]) on the same batch of 1024: ours
  (``method.backward``) against TorchJD's ``mtl_backward`` (autojac: the Jacobian of the shared
  parameters through the expert outputs, its ``.jac`` fields) + ``jac_to_grad``. Agreement: the
  relative difference of the shared parameters' gradients after one step from the same weights
  (EW, UPGrad and MGDA are deterministic; PCGrad and GradVac draw their orders differently, so
  their column is left empty). LibMTL 1.1.5's PCGrad (its files loaded without the package's
  imports, bound to the model as its trainer binds it): T backward passes, the flattened J, the
  projections in Python.
- ``census``: Census-Income group 1 end to end: torch-rechub 0.9's MMOE with its ``MTLTrainer`` at
  its ``run_census.py`` configuration (4-dim embeddings, 8 experts [16], towers [8], Adam lr 1e-3,
  weight decay 1e-4, batch 1024, early stopping on income) against ``mtlkernels`` ``Trainer`` at
  that model size with batch norm in the experts and towers as its MLPs have it (parameter counts
  printed), on the same splits and preprocessed tensors (our vocabularies and standardised dense
  columns for both), ``--epochs`` each (10, the issue's measurement) for each of ``--seeds``
  (model initialisation and batch order); test AUC of both tasks (mean ± std over the seeds)
  and seconds per epoch. ``mtlkernels train``'s default model is the README's reproduction.
- ``models``: MMoE and PLE (2 levels) forward+backward (Adam step excluded) and serving (eval forward at batch 128)
  at the Census size and the many-small-experts size of ``bench/models_table.py``: ours against
  torch-rechub 0.9's MMOE (ours with batch norm on, as its MLPs have it; its gates carry one more),
  DeepCTR-Torch 0.3's (linear gates without bias, no batch norm) and NextRec's (linear gates with
  bias, no batch norm: ours exactly; it returns logits, the other two probabilities), each fed one
  dense feature of the input width; parameter counts printed.
- ``metrics``: AUC over 1e6 rows against scikit-learn's ``roc_auc_score`` and torchmetrics'
  ``binary_auroc``; uAUC (the user-averaged AUC) over 1e6 rows and 1e4 users against the usual
  per-user ``roc_auc_score`` loop (users with one class skipped); values checked equal.
- ``aggregation``: the update of a given J ``[T, P]`` (float32, as training computes it) by each
  method: ours (Gram + T x T solver + combine written into an existing ``.grad``-sized buffer, as
  in a training loop after its first step) against TorchJD's aggregator ``A(J)`` (its output a
  fresh tensor; the allocator kept steady so it costs no page faults). Agreement: the relative
  difference of the two updates on a float64 J ``[T, 20000]``, with the same task orders for
  PCGrad and GradVac, TorchJD's GradVac EMA rule, scale conventions aligned. MGDA differs by
  definition (ours solves the min-norm problem exactly, TorchJD runs Frank-Wolfe): its column is
  ``w'Gw`` of TorchJD's weights over ours, the excess of its objective. LibMTL 1.1.5 (PCGrad,
  GradVac, MGDA: its weighting classes' ``backward`` with J in place of its per-task backward
  passes, writing its update with its own ``_reset_grad``; its CAGrad is written for exactly 3
  tasks, its other methods are not aggregations of J): time and agreement alike, with its
  ``random.shuffle`` orders.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import ensure_steady_malloc, interleaved_medians, matmul_rate  # noqa: E402

from mtlkernels import balance  # noqa: E402
from mtlkernels.ops import combine_, gram  # noqa: E402
from mtlkernels.ops.solvers import gradvac_weights, pcgrad_weights  # noqa: E402


@functools.cache
def libmtl_weighting(name: str):
    """LibMTL 1.1.5's weighting class ``name`` (e.g. "PCGrad"), loaded from its files without the
    package's ``__init__`` (which imports its trainer, models and their dependencies), once; None
    if LibMTL is not installed."""
    import importlib.util
    import types

    if "LibMTL.weighting" in sys.modules:  # the package shells made by an earlier call
        root = sys.modules["LibMTL"].__path__[0]
    else:
        spec = importlib.util.find_spec("LibMTL")
        if spec is None or not spec.submodule_search_locations:
            return None
        root = spec.submodule_search_locations[0]
        for pkg, path in (("LibMTL", root), ("LibMTL.weighting", os.path.join(root, "weighting"))):
            module = types.ModuleType(pkg)
            module.__path__ = [path]
            sys.modules[pkg] = module
    module_spec = importlib.util.spec_from_file_location(f"LibMTL.weighting.{name}",
                                                         os.path.join(root, "weighting", f"{name}.py"))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def libmtl_adapter(cls, shared, T: int):
    """A LibMTL weighting bound to our model the way its trainer binds it: the shared parameters,
    the task count, the device."""

    class Bound(cls):
        def __init__(self):
            super().__init__()
            self.task_num, self.device, self.rep_grad = T, torch.device("cpu"), False

        def get_share_params(self):
            return shared

        def zero_grad_share_params(self):
            for p in shared:
                if p.grad is not None:
                    p.grad.zero_()

    return Bound()


#: method -> (LibMTL 1.1.5's weighting class, the keyword arguments its trainer passes, at LibMTL's defaults)
LIBMTL_AGGREGATORS = {"PCGrad": ("PCGrad", {}), "GradVac": ("GradVac", {"beta": 0.5}),
                      "MGDA": ("MGDA", {"mgda_gn": "none"})}


def libmtl_aggregates(name: str) -> bool:
    """Whether LibMTL is installed and has an aggregation of J for our method ``name``."""
    return name in LIBMTL_AGGREGATORS and libmtl_weighting(LIBMTL_AGGREGATORS[name][0]) is not None


def libmtl_given_j(name: str, J: torch.Tensor):
    """LibMTL's weighting ``name`` run on a given J ``[T, P]``: its ``backward`` with the per-task
    backward passes replaced by J, its update written by its own ``_reset_grad`` into the ``.grad``
    of one shared parameter of P elements (allocated, as after a first step). Returns (a function
    that runs one aggregation, that parameter). Only where ``libmtl_aggregates(name)``."""
    cls_name, kwargs = LIBMTL_AGGREGATORS[name]
    cls = libmtl_weighting(cls_name)
    param = torch.nn.Parameter(torch.zeros(J.shape[1], dtype=J.dtype))
    param.grad = torch.zeros_like(param)

    class GivenJ(libmtl_adapter(cls, [param], J.shape[0]).__class__):
        def _compute_grad(self, losses, mode, rep_grad=False):
            return J

    weighting = GivenJ()
    losses = torch.ones(J.shape[0], dtype=J.dtype)
    return (lambda: weighting.backward(losses, **kwargs)), param


def libmtl_orders(T: int, seed: int, skip_self: bool) -> torch.Tensor:
    """The task orders LibMTL's PCGrad (a shuffle of all tasks per task) or GradVac (a shuffle of
    the others) draws from Python's ``random`` after ``random.seed(seed)``, in our ``[T, T]`` form
    (GradVac's own task last, where it changes nothing)."""
    import random

    random.seed(seed)
    rows = []
    for i in range(T):
        index = [j for j in range(T) if not (skip_self and j == i)]
        random.shuffle(index)
        rows.append(index + ([i] if skip_self else []))
    return torch.tensor(rows)


def libmtl_agreement(name: str, T: int) -> str:
    """The relative difference of LibMTL's update and ours on a float64 conflicting J, with the same
    task orders (MGDA: ``w'Gw`` of its Frank-Wolfe weights over our exact solve)."""
    import random

    J = conflicting_j(T)
    if name == "MGDA":  # its min-norm solver allocates float32 buffers: run it in float32
        J = J.float()
    G = J.double() @ J.double().T
    run, param = libmtl_given_j(name, J)
    random.seed(0)
    w_theirs = run()
    ref = param.grad
    if name == "MGDA":
        w = balance.aggregate(balance.MGDA(), J.double())[1]
        w_theirs = torch.as_tensor(w_theirs, dtype=torch.float64)
        return f"w'Gw x{float(w_theirs @ G @ w_theirs) / float(w @ G @ w):.4f}"
    order = libmtl_orders(T, 0, skip_self=name == "GradVac")
    if name == "PCGrad":
        w = pcgrad_weights(G, order)
    else:
        w, _ = gradvac_weights(G, order, torch.zeros(T, T, dtype=torch.float64), 0.5, every_pair=False)
    d = w @ J
    return f"{float((d - ref).norm() / ref.norm()):.1e}"


try:
    from torchjd import aggregation as tjd
except ImportError as exc:  # a bench: say what is missing and go on
    tjd = None
    TORCHJD_MISSING = str(exc)


def read_bandwidth() -> float:
    x = torch.randn(50_000_000)
    return x.numel() * 4 / interleaved_medians({"sum": lambda: x.sum()}, reps=7)["sum"]


def torchjd_orders(T: int, seed: int, skip_self_first: bool) -> torch.Tensor:
    """The task orders TorchJD's PCGrad (a permutation of all tasks per task) or GradVac (a
    permutation of the others) draws after ``torch.manual_seed(seed)``, in our ``[T, T]`` form."""
    torch.manual_seed(seed)
    rows = []
    for i in range(T):
        if skip_self_first:
            others = [j for j in range(T) if j != i]
            rows.append([others[k] for k in torch.randperm(T - 1).tolist()] + [i])
        else:
            rows.append(torch.randperm(T).tolist())
    return torch.tensor(rows)


#: name -> (our method, TorchJD's aggregator factory, our update's scale over TorchJD's)
def pairs():
    return {
        "PCGrad": (balance.PCGrad, lambda T: tjd.PCGrad(), 1),
        "GradVac": (lambda: balance.GradVac(ema="torchjd"), lambda T: tjd.GradVac(), 1),
        "MGDA": (balance.MGDA, lambda T: tjd.MGDA(), 1),
        "UPGrad": (balance.UPGrad, lambda T: tjd.UPGrad(), 1),
        "DualProj": (balance.DualProj, lambda T: tjd.DualProj(), 1),
        "IMTL-G": (balance.IMTLG, lambda T: tjd.IMTLG(), 1),
        "Aligned-MTL": (balance.AlignedMTL, lambda T: tjd.AlignedMTL(), "T"),
        "CAGrad": (lambda: balance.CAGrad(0.5, rescale=0), lambda T: tjd.CAGrad(c=0.5), 1),
        "Nash-MTL": (balance.NashMTL, lambda T: tjd.NashMTL(n_tasks=T), 1),
    }


def conflicting_j(T: int) -> torch.Tensor:
    """A float64 J ``[T, 20000]`` whose first half of tasks conflicts with the second: a shared
    direction with opposite signs plus independent noise (pairwise cosines about -0.2 across the
    halves, +0.2 within), so that PCGrad and GradVac do project."""
    g = torch.Generator().manual_seed(T)
    u = torch.randn(20_000, generator=g, dtype=torch.float64)
    sign = torch.where(torch.arange(T) < T // 2, -1.0, 1.0).to(torch.float64)
    return 0.5 * sign[:, None] * u + torch.randn(T, 20_000, generator=g, dtype=torch.float64)


def agreement(name: str, ours, theirs, scale, T: int) -> str:
    J = conflicting_j(T)
    G = J @ J.T
    if name in ("PCGrad", "GradVac"):
        order = torchjd_orders(T, 0, skip_self_first=name == "GradVac")
        torch.manual_seed(0)
        ref = theirs(T)(J)
        if name == "PCGrad":
            w = pcgrad_weights(G, order)
        else:
            w, _ = gradvac_weights(G, order, torch.zeros(T, T, dtype=torch.float64), 0.5, every_pair=True)
        d = w @ J
    else:
        ref = theirs(T)(J)
        d, w = balance.aggregate(ours(), J)
        d = d / (T if scale == "T" else scale)
    if name == "MGDA":
        w_ref = torch.linalg.lstsq(J.T, ref[:, None]).solution[:, 0]
        return f"w'Gw x{float(w_ref @ G @ w_ref) / float(w @ G @ w):.4f}"
    return f"{float((d - ref).norm() / ref.norm().clamp_min(1e-300)):.1e}"


def aggregation_section(Ps, Ts, reps: int) -> None:
    print("\n## Aggregation of a given J: ours vs TorchJD and LibMTL (ms, median of interleaved runs)\n")
    if tjd is None:
        print(f"TorchJD is not importable ({TORCHJD_MISSING}); see the docstring.")
        return
    print("| method | P | T | ours ms | TorchJD ms | TorchJD / ours | agreement (float64) | LibMTL ms | LibMTL / ours | "
          "agreement with LibMTL (float64) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (ours, theirs, scale) in pairs().items():
        for T in Ts:
            try:
                agree = agreement(name, ours, theirs, scale, T)
            except Exception as exc:  # a peer's solver failing is a result, not a crash
                agree = f"TorchJD failed: {type(exc).__name__}"
            has_libmtl = libmtl_aggregates(name)
            agree_libmtl = libmtl_agreement(name, T) if has_libmtl else ""
            for P in Ps:
                J = torch.randn(T, P)
                out = torch.empty(P)
                method, aggregator = ours(), theirs(T)
                losses = torch.ones(T, dtype=torch.float64)

                def ours_step():
                    G = gram([J])
                    w = method.gram_weights(G, losses)
                    combine_([J], w.float(), [out], accumulate=False)

                fns = {"ours": ours_step, "torchjd": lambda: aggregator(J)}
                if has_libmtl:
                    fns["libmtl"] = libmtl_given_j(name, J)[0]
                t = interleaved_medians(fns, reps=reps, warmup=1)
                lib = (f"{t['libmtl'] * 1e3:.2f} | {t['libmtl'] / t['ours']:.1f}x | {agree_libmtl}"
                       if has_libmtl else " | | ")
                print(f"| {name} | {P:.0e} | {T} | {t['ours'] * 1e3:.2f} | {t['torchjd'] * 1e3:.2f} | "
                      f"{t['torchjd'] / t['ours']:.1f}x | {agree} | {lib} |", flush=True)


#: the step section's methods: name -> (our method, TorchJD's aggregator), each a factory
STEP_METHODS = {"EW": (lambda: balance.EW("mean"), lambda: tjd.Mean()),
                "UPGrad": (balance.UPGrad, lambda: tjd.UPGrad()), "MGDA": (balance.MGDA, lambda: tjd.MGDA()),
                "PCGrad": (balance.PCGrad, lambda: tjd.PCGrad()),
                "GradVac": (lambda: balance.GradVac(ema="torchjd"), lambda: tjd.GradVac())}


def step_functions(name: str) -> tuple[dict, list]:
    """One training step of the step section's MMoE (512 inputs, 8 experts [256, 128], 4 tasks,
    batch 1024; SGD at lr 0, so every step starts from the same weights) under method ``name``,
    per side: ``{"ours", "torchjd"[, "libmtl" for PCGrad]: step}``, and the shared parameters
    (whose ``.grad`` each step leaves). Needs TorchJD."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    from mtlkernels import nn as mnn

    torch.manual_seed(0)
    model = mnn.MMoE(512, 4, 8, (256, 128), (64,))
    x = torch.randn(1024, 512)
    y = (torch.rand(1024, 4) < 0.3).float()
    shared = list(model.shared_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    ours, theirs = STEP_METHODS[name]
    method, aggregator = ours(), theirs()

    def ours_step():
        opt.zero_grad(set_to_none=True)
        method.backward(bce(model(x), y, reduction="none").mean(0), model)
        opt.step()

    def torchjd_step():
        opt.zero_grad(set_to_none=True)
        logits, rep = model(x, return_representation=True)
        losses = bce(logits, y, reduction="none").mean(0)
        # retain_graph: the tasks' heads are one fused op (gate_mix, grouped towers) that its per-task
        # passes through the heads would otherwise free after the first task
        mtl_backward(list(losses), features=rep, shared_params=shared, retain_graph=True)
        jac_to_grad(shared, aggregator)
        opt.step()

    fns = {"ours": ours_step, "torchjd": torchjd_step}
    libmtl_pcgrad = libmtl_weighting("PCGrad") if name == "PCGrad" else None
    if libmtl_pcgrad is not None:
        libmtl = libmtl_adapter(libmtl_pcgrad, shared, 4)

        def libmtl_step():  # its trainer's step: T backward passes, the flattened J, PCGrad in Python
            opt.zero_grad(set_to_none=False)
            libmtl.backward(bce(model(x), y, reduction="none").mean(0))
            opt.step()
        fns["libmtl"] = libmtl_step
    return fns, shared


def step_section(reps: int) -> None:
    print("\n## A whole training step, MMoE on one batch: ours vs TorchJD's mtl_backward (ms, median)\n")
    if tjd is None:
        print(f"TorchJD is not importable ({TORCHJD_MISSING}); see the docstring.")
        return
    print("| method | ours ms | TorchJD ms | TorchJD / ours | LibMTL ms | LibMTL / ours | "
          "agreement of the shared gradients (TorchJD) |")
    print("|---|---|---|---|---|---|---|")
    for name in STEP_METHODS:
        fns, shared = step_functions(name)
        agree = ""
        if name in ("EW", "UPGrad", "MGDA"):
            fns["ours"]()
            mine = torch.cat([p.grad.flatten() for p in shared])
            fns["torchjd"]()
            theirs_ = torch.cat([p.grad.flatten() for p in shared])
            agree = f"{float((mine - theirs_).norm() / theirs_.norm()):.1e}"
        t = interleaved_medians(fns, reps=reps, warmup=1)
        lib = (f"{t['libmtl'] * 1e3:.1f} | {t['libmtl'] / t['ours']:.2f}x") if "libmtl" in t else " | "
        print(f"| {name} | {t['ours'] * 1e3:.1f} | {t['torchjd'] * 1e3:.1f} | {t['torchjd'] / t['ours']:.2f}x | "
              f"{lib} | {agree} |", flush=True)


def census_section(epochs: int, seeds: list[int]) -> None:
    print(f"\n## Census group 1, {epochs} epochs: torch-rechub's MMOE and trainer vs mtlkernels at that size\n")
    try:
        from torch_rechub.basic.features import DenseFeature, SparseFeature
        from torch_rechub.models.multi_task import MMOE
        from torch_rechub.trainers import MTLTrainer
        from torch_rechub.utils.data import DataGenerator
    except ImportError as exc:
        print(f"torch-rechub is not importable ({exc}); see the docstring.")
        return
    import statistics
    import tempfile
    import time

    from mtlkernels.config import TrainConfig
    from mtlkernels.metrics import auc
    from mtlkernels.train import Trainer, load_data

    # batch norm on ours: torch-rechub's MLPs (experts and towers) have it
    size = dict(dense_bins=0, embedding_dim=4, experts=8, expert_hidden=[16], tower_hidden=[8], lr=1e-3,
                weight_decay=1e-4, batch_size=1024, epochs=epochs, patience=epochs, batch_norm=True, progress=False)
    data = load_data(TrainConfig(**size))
    schema = data.feature_schema(4)
    sparse, dense = [f.name for f in schema.sparse], list(schema.dense)

    def frame(split):
        x = {n: split.sparse[:, k].numpy() for k, n in enumerate(sparse)}
        x.update({n: split.dense[:, k].float().numpy() for k, n in enumerate(dense)})
        return x, split.labels.numpy()

    (xt, yt), (xv, yv), (xs, ys) = frame(data.train), frame(data.valid), frame(data.test)
    results = {"rechub": [], "ours": []}  # per seed: (income AUC, never_married AUC, s / epoch)
    counts = {}
    for seed in seeds:
        torch.manual_seed(seed)
        features = [SparseFeature(f.name, f.vocab_size, embed_dim=4) for f in schema.sparse] + \
            [DenseFeature(n) for n in dense]
        model = MMOE(features, ["classification", "classification"], 8, expert_params={"dims": [16]},
                     tower_params_list=[{"dims": [8]}, {"dims": [8]}])
        counts["rechub"] = sum(p.numel() for p in model.parameters())
        loaders = DataGenerator(xt, yt).generate_dataloader(x_val=xv, y_val=yv, x_test=xs, y_test=ys,
                                                            batch_size=1024)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = MTLTrainer(model, task_types=["classification", "classification"],
                                 optimizer_params={"lr": 1e-3, "weight_decay": 1e-4}, n_epoch=epochs,
                                 earlystop_patience=30, device="cpu", model_path=tmp)
            t0 = time.perf_counter()
            trainer.fit(loaders[0], loaders[1])
            seconds = (time.perf_counter() - t0) / epochs  # validation scoring included, as in its loop
        model.eval()
        with torch.no_grad():
            probs = torch.cat([model({k: v for k, v in x.items()}) for x, _ in loaders[2]])
        results["rechub"].append((*(float(auc(probs[:, k].double(), data.test.labels[:, k])) for k in range(2)),
                                  seconds))
        ours = Trainer(TrainConfig(**size, seed=seed, threads=torch.get_num_threads()), data, None)
        counts["ours"] = sum(p.numel() for p in ours.model.parameters())
        t0 = time.perf_counter()
        m = ours.fit()
        test = m["final"]["test"]
        results["ours"].append((test["income"]["auc"], test["never_married"]["auc"],
                                (time.perf_counter() - t0) / len(m["epochs"])))

    def cell(values, digits):
        sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.{digits}f}{sd}"

    print(f"seeds {seeds}\n")
    print("| side | parameters | income test AUC | never_married test AUC | s / epoch (training + validation) |")
    print("|---|---|---|---|---|")
    for key, label in (("rechub", "torch-rechub 0.9 MMOE + MTLTrainer"), ("ours", "mtlkernels MMoE + Trainer, same size")):
        r = results[key]
        print(f"| {label} | {counts[key]:,} | {cell([x[0] for x in r], 4)} | {cell([x[1] for x in r], 4)} | "
              f"{cell([x[2] for x in r], 2)} |")
    speed = statistics.mean(x[2] for x in results["rechub"]) / statistics.mean(x[2] for x in results["ours"])
    print(f"\nours {speed:.1f}x faster per epoch", flush=True)


def import_nextrec():
    """NextRec's multi-task models module and DenseFeature, from a ``nextrec_env`` folder next to
    the peers (appended to sys.path last: its dependencies must not shadow the project's numpy)."""
    for entry in list(sys.path):
        env = os.path.join(entry, "nextrec_env")
        if os.path.isdir(env) and env not in sys.path:
            sys.path.append(env)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nextrec.basic.features import DenseFeature
        from nextrec.models import multitask
        import nextrec.models.multitask.mmoe  # noqa: F401
        import nextrec.models.multitask.ple  # noqa: F401
    return DenseFeature, multitask


def our_model(kind: str, c: dict, batch_norm: bool):
    """Our MMoE or PLE (2 levels) at config c of bench/models_table.py, the peers' counterpart."""
    from mtlkernels import nn as mnn

    if kind == "MMoE":
        return mnn.MMoE(c["input_dim"], c["tasks"], c["experts"], c["expert_hidden"], c["tower_hidden"],
                        batch_norm=batch_norm)
    return mnn.PLE(c["input_dim"], c["tasks"], c["ple"][0], c["ple"][1], c["expert_hidden"], c["tower_hidden"],
                   num_levels=2, batch_norm=batch_norm)


def peer_models(kind: str, c: dict):
    """(peer name, its ``kind`` model (MMoE or PLE) at config c called on a [B, input] tensor, the
    module, whether ours needs batch norm to match it, whether it returns probabilities) for each
    installed peer."""
    T, d = c["tasks"], c["input_dim"]
    own, shared = c["ple"]
    peers = []
    try:
        from torch_rechub.basic.features import DenseFeature
        from torch_rechub.models.multi_task import MMOE, PLE

        features, towers = [DenseFeature("x", embed_dim=d)], [{"dims": list(c["tower_hidden"])}] * T
        experts = {"dims": list(c["expert_hidden"])}
        rechub = (MMOE(features, ["classification"] * T, c["experts"], expert_params=experts, tower_params_list=towers)
                  if kind == "MMoE" else PLE(features, ["classification"] * T, 2, own, shared, experts, towers))
        peers.append(("torch-rechub 0.9", lambda x, m=rechub: m({"x": x}), rechub, True, True))
    except ImportError as exc:
        print(f"torch-rechub is not importable ({exc})")
    try:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # its import prints a version check
            from deepctr_torch.inputs import DenseFeat
            from deepctr_torch.models.multitask import MMOE as DeepCTRMMOE
            from deepctr_torch.models.multitask import PLE as DeepCTRPLE
        common = dict(expert_dnn_hidden_units=tuple(c["expert_hidden"]), gate_dnn_hidden_units=(),
                      tower_dnn_hidden_units=tuple(c["tower_hidden"]), task_types=["binary"] * T,
                      task_names=[f"t{k}" for k in range(T)])
        if kind == "PLE" and own != shared:
            # its PLE builds the shared experts with the task-expert count, and its forward then
            # indexes past them
            print(f"DeepCTR-Torch 0.3's PLE is left out at {own} task / {shared} shared experts: it builds {own} "
                  "shared experts and its forward fails")
        else:
            deepctr = (DeepCTRMMOE([DenseFeat("x", d)], num_experts=c["experts"], **common) if kind == "MMoE"
                       else DeepCTRPLE([DenseFeat("x", d)], shared_expert_num=shared, specific_expert_num=own,
                                       num_levels=2, **common))
            peers.append(("DeepCTR-Torch 0.3", deepctr, deepctr, False, True))
    except ImportError as exc:
        print(f"DeepCTR-Torch is not importable ({exc})")
    try:
        from importlib.metadata import version

        DenseFeature, multitask = import_nextrec()
        experts, towers = {"hidden_dims": list(c["expert_hidden"])}, [{"hidden_dims": list(c["tower_hidden"])}] * T
        common = dict(dense_features=[DenseFeature("x", input_dim=d)], tower_mlp_params_list=towers,
                      target=[f"t{k}" for k in range(T)], task=["binary"] * T, device="cpu")
        nextrec = (multitask.mmoe.MMOE(expert_mlp_params=experts, num_experts=c["experts"], **common)
                   if kind == "MMoE" else
                   multitask.ple.PLE(shared_expert_mlp_params=experts, specific_expert_mlp_params=[experts] * T,
                                     num_shared_experts=shared, num_specific_experts=own, num_levels=2, **common))
        peers.append((f"NextRec {version('nextrec')}", lambda x, m=nextrec: m({"x": x}), nextrec, False, False))
    except ImportError as exc:
        print(f"NextRec is not importable ({exc})")
    return peers


def models_section(reps: int) -> None:
    print("\n## MMoE and PLE forward+backward and serving: ours vs the recsys libraries' (ms, median)\n")
    from models_table import CONFIGS, build, linear_flops

    rate = matmul_rate(torch.float32)
    print(f"GEMM floor: the matrix-product FLOPs of forward and backward / {rate / 1e9:.0f} GFLOP/s (fp32 2048^3)\n")
    print("| model | size | peer | params ours / peer | fwd+bwd ours (/ floor) | fwd+bwd peer (/ floor) | ratio | "
          "ours bf16 autocast | peer fp32 / ours bf16 | serving B128 ours | serving peer | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for kind, (name, c) in ((k, nc) for k in ("MMoE", "PLE") for nc in CONFIGS.items()):
        floor = linear_flops(build(kind, c)[0], c["batch"], c["input_dim"]) / rate
        for peer, call, module, batch_norm, probabilities in peer_models(kind, c):
            torch.manual_seed(0)
            ours = our_model(kind, c, batch_norm)
            x = torch.randn(c["batch"], c["input_dim"])
            serve = torch.randn(128, c["input_dim"])

            def train(model, f, bf16=False):
                def step():
                    model.train()
                    model.zero_grad(set_to_none=True)
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        out = f(x)
                    out.float().sum().backward()
                return step

            def serving(model, f):
                def run():
                    model.eval()
                    with torch.no_grad():
                        f(serve)
                return run

            # ours returns logits; the sigmoid where the peer returns probabilities
            same = (lambda z, m=ours: torch.sigmoid(m(z))) if probabilities else ours
            t = interleaved_medians({"to": train(ours, same), "tp": train(module, call),
                                     "tb": train(ours, same, bf16=True)}, reps=max(reps, 11), warmup=2)
            # apart: a served model's weights and statistics do not change between requests
            # (a training step in between would re-fold our batch norms on every call)
            t.update(interleaved_medians({"so": serving(ours, same), "sp": serving(module, call)},
                                         reps=max(reps, 11), warmup=2))
            count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
            print(f"| {kind} | {name} | {peer} | {count(ours):,} / {count(module):,} | {t['to'] * 1e3:.2f} "
                  f"({t['to'] / floor:.2f}) | {t['tp'] * 1e3:.2f} ({t['tp'] / floor:.2f}) | {t['tp'] / t['to']:.2f}x | "
                  f"{t['tb'] * 1e3:.2f} | {t['tp'] / t['tb']:.2f}x | {t['so'] * 1e3:.3f} | {t['sp'] * 1e3:.3f} | "
                  f"{t['sp'] / t['so']:.2f}x |", flush=True)


def metrics_section(reps: int) -> None:
    print("\n## Metrics: AUC and uAUC on 1e6 rows (ms, median) and the values\n")
    import numpy as np

    from mtlkernels import metrics
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError as exc:
        print(f"scikit-learn is not importable ({exc})")
        return
    try:
        from torchmetrics.functional.classification import binary_auroc
    except ImportError:
        binary_auroc = None
    g = torch.Generator().manual_seed(0)
    rows, users = 1_000_000, 10_000
    scores = torch.round(torch.rand(rows, generator=g, dtype=torch.float64) * 1000) / 1000  # many ties
    labels = (torch.rand(rows, generator=g) < 0.1).long()
    user = torch.randint(0, users, (rows,), generator=g)
    s_np, l_np, u_np = scores.numpy(), labels.numpy(), user.numpy()

    def per_user_loop():  # the usual uAUC: one roc_auc_score per user with both classes
        order = np.argsort(u_np, kind="stable")
        bounds = np.flatnonzero(np.diff(u_np[order])) + 1
        values = [roc_auc_score(l_np[idx], s_np[idx]) for idx in np.split(order, bounds)
                  if 0 < l_np[idx].sum() < len(idx)]
        return float(np.mean(values))

    fns = {"ours auc": lambda: metrics.auc(scores, labels), "sklearn auc": lambda: roc_auc_score(l_np, s_np),
           "ours uauc": lambda: metrics.uauc(scores, labels, user)}
    if binary_auroc is not None:
        fns["torchmetrics auc"] = lambda: binary_auroc(scores, labels)
    t = interleaved_medians(fns, reps=reps, warmup=1)
    t["sklearn per-user loop"] = interleaved_medians({"loop": per_user_loop}, reps=max(1, reps // 3), warmup=0)["loop"]
    ours_auc, ours_uauc = float(metrics.auc(scores, labels)), float(metrics.uauc(scores, labels, user).value)
    values = {"ours auc": ours_auc, "sklearn auc": roc_auc_score(l_np, s_np), "ours uauc": ours_uauc,
              "sklearn per-user loop": per_user_loop()}
    if binary_auroc is not None:
        values["torchmetrics auc"] = float(binary_auroc(scores, labels))
    print("| what | ms | value | difference from ours |")
    print("|---|---|---|---|")
    for name in ("ours auc", "sklearn auc", "torchmetrics auc", "ours uauc", "sklearn per-user loop"):
        if name in t:
            mine = ours_uauc if "uauc" in name or "loop" in name else ours_auc
            print(f"| {name} | {t[name] * 1e3:.1f} | {values[name]:.12f} | {abs(values[name] - mine):.1e} |",
                  flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", nargs="+", default=["step", "aggregation", "models", "metrics", "census"],
                   choices=["step", "aggregation", "models", "metrics", "census"])
    p.add_argument("--epochs", type=int, default=10, help="epochs of the census section")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the census section")
    p.add_argument("--P", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    p.add_argument("--T", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--system-malloc", action="store_true")
    args = p.parse_args()
    allocator = ensure_steady_malloc(args.system_malloc)
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n# mtlkernels vs peers: torch {torch.__version__}, {threads} thread(s), allocator: {allocator}; "
              f"this machine: {read_bandwidth() / 1e9:.1f} GB/s read, {matmul_rate() / 1e9:.0f} GFLOP/s fp32 GEMM")
        if "step" in args.sections:
            step_section(args.reps)
        if "aggregation" in args.sections:
            aggregation_section([int(x) for x in args.P], args.T, args.reps)
        if "models" in args.sections:
            models_section(args.reps)
        if "metrics" in args.sections:
            metrics_section(args.reps)
        if "census" in args.sections:
            census_section(args.epochs, [int(x) for x in args.seeds.split(",")])


if __name__ == "__main__":
    main()
