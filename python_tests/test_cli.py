"""The command line: `mtlkernels info` and the swap-in demo."""
from __future__ import annotations

import json

from mtlkernels import cli
from mtlkernels.demo import run_demo


def test_info_prints_build_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "native" in info and "cpu_isa" in info


def test_demo_swap_is_exact_and_reports_timings(capsys):
    result = run_demo(batch=64, in_features=16, expert_dim=8, num_experts=3, num_tasks=2, reps=2)
    assert result["max_abs_diff_output"] < 1e-5
    assert result["max_abs_diff_grads"] < 1e-5
    assert all(result[k] > 0 for k in ("layer_loop_ms", "layer_swapped_ms", "mixture_loop_ms", "mixture_kernel_ms"))
    assert cli.main(["demo", "--batch", "32", "--experts", "3", "--tasks", "2", "--expert-dim", "8",
                     "--in-features", "8", "--reps", "2"]) == 0
    out = capsys.readouterr().out
    assert "swap is exact" in out and "whole layer" in out
