"""Run inside the CUDA build tree by cuda_compile_check.sh: the CUDA-built extension imports
without a GPU, has CUDA kernels for every op, propagates shapes for CUDA fake tensors, and
its CPU kernels agree with the reference under this torch."""
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mtlkernels
from mtlkernels import _C
from mtlkernels.ops import gate_mix, grouped_mlp
from mtlkernels.ops.counter_keys import counter_keys
from mtlkernels.reference import gate_mix as reference_gate_mix
from mtlkernels.reference.counter_keys import counter_keys as reference_counter_keys
from mtlkernels.reference.grouped_mlp import grouped_mlp as reference_grouped_mlp

OPS = ["gate_mix", "gate_mix_backward", "gram", "block_grams", "combine_",
       "pcgrad_weights", "gradvac_weights", "mgda_weights", "min_norm_weights", "peltr_weights",
       "dual_cone_weights", "cagrad_weights", "counter_keys", "grouped_mlp", "grouped_mlp_backward"]

info = mtlkernels.build_info()
print("build_info:", info)
assert torch.version.cuda is not None, "not a CUDA build of torch"
assert _C.with_cuda, "_C was built without CUDA"
assert info["backends"] == ["cpu", "cuda"], info
for op in OPS:
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mtlk::{op}", key), f"mtlk::{op} has no {key} kernel"

with FakeTensorMode():
    e = torch.empty(4, 3, 5, device="cuda")
    lg = torch.empty(4, 2, 3, device="cuda")
    out, probs = torch.ops.mtlk.gate_mix(e, lg, None, True)
    assert out.shape == (4, 2, 5) and out.device.type == "cuda" and probs.shape == (4, 2, 3)
    acts = torch.ops.mtlk.grouped_mlp(torch.empty(4, 6, device="cuda"),
                                      [torch.empty(6, 3, 5, device="cuda"), torch.empty(3, 5, 2, device="cuda")],
                                      [torch.empty(3, 5, device="cuda"), torch.empty(3, 2, device="cuda")],
                                      [True, False], True)
    assert acts[0].shape == (3, 4, 5) and acts[1].shape == (4, 3, 2) and acts[1].device.type == "cuda"
    gated = torch.ops.mtlk.grouped_mlp(torch.empty(4, 6, device="cuda"), [torch.empty(6, 3, 5, device="cuda")],
                                       [torch.empty(3, 5, device="cuda")], [True], True,
                                       [torch.empty(4, 3, 5, device="cuda")])
    assert gated[0].shape == (4, 3, 5) and gated[0].device.type == "cuda"

e, lg = torch.randn(9, 4, 33, dtype=torch.float64), torch.randn(9, 3, 4, dtype=torch.float64)
torch.testing.assert_close(gate_mix(e, lg, backend="native"), reference_gate_mix(e, lg)[0])
x, ws, bs = torch.randn(7, 5, dtype=torch.float64), [torch.randn(5, 3, 4, dtype=torch.float64)], [None]
torch.testing.assert_close(grouped_mlp(x, ws, bs, [True], shared_input=True, backend="native"),
                           reference_grouped_mlp(x, ws, bs, [True], True)[-1])
u = [torch.randn(7, 3, 4, dtype=torch.float64)]
torch.testing.assert_close(grouped_mlp(x, ws, bs, [True], shared_input=True, gates=u, backend="native"),
                           reference_grouped_mlp(x, ws, bs, [True], True, u)[-1])
seed, draw = torch.tensor(5), torch.tensor(3)
assert torch.equal(counter_keys(seed, draw, 100, backend="native"), reference_counter_keys(seed, draw, 100))
print("cuda_compile_check: CUDA kernels registered for", ", ".join(OPS))
