"""Loss weighting and gradient methods, one file per method, one interface:

    method.backward(losses [T], shared=model_or_params, *, representation=None) -> weights [T]

fills ``.grad`` of the shared parameters (the methods' combination of the task gradients)
and of every other parameter the losses reach (the gradient of ``sum_t w_t L_t``), then you
call ``optimizer.step()``. Stateful methods are ``nn.Module``s: ``state_dict()`` resumes them.
``aggregate(method, J)`` applies a gradient method to task gradients held already.
"""
from mtlkernels.balance.aggregate import aggregate
from mtlkernels.balance.aligned_mtl import AlignedMTL
from mtlkernels.balance.cagrad import CAGrad
from mtlkernels.balance.dualproj import DualProj
from mtlkernels.balance.dwa import DWA
from mtlkernels.balance.ew import EW
from mtlkernels.balance.famo import FAMO
from mtlkernels.balance.gradnorm import GradNorm
from mtlkernels.balance.gradvac import GradVac
from mtlkernels.balance.imtl import IMTLG
from mtlkernels.balance.jacobian import task_gradients
from mtlkernels.balance.mgda import MGDA
from mtlkernels.balance.nash_mtl import NashMTL
from mtlkernels.balance.pcgrad import PCGrad
from mtlkernels.balance.peltr import PELTR
from mtlkernels.balance.rlw import RLW
from mtlkernels.balance.upgrad import UPGrad
from mtlkernels.balance.uw import UncertaintyWeighting

__all__ = ["aggregate", "AlignedMTL", "CAGrad", "DualProj", "DWA", "EW", "FAMO", "GradNorm", "GradVac", "IMTLG",
           "MGDA", "NashMTL", "PCGrad", "PELTR", "RLW", "UPGrad", "UncertaintyWeighting", "task_gradients"]
