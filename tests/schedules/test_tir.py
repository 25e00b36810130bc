"""The TIR lowering of our kernels: register tiles are stack arrays, not workspace calls."""

from __future__ import annotations

from typing import Any

import pytest
import tvm

from edgecompile.schedules import optimize, tir
from edgecompile.schedules.tir import register_tir_pipeline

from .test_conv_schedules import (
    Conv,
    Network,
    import_network,
    inverted_residual,
    scheduled_functions,
)

WORKSPACE_CALL = "TVMBackendAllocWorkspace"


def llvm_ir(func: Any, target: Any, pipeline: str) -> str:
    module = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.tirx.build(module, target=target, pipeline=pipeline).inspect_source("ll")


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory, host_target: Any) -> dict[str, Any]:
    """MobileNetV2's block plus a dense 3×3 (whose padded input window is a per-tile buffer)."""
    network = Network(
        [*inverted_residual().layers, Conv(24, 32, kernel=3, epilogue="relu")],
        height=15,
        width=15,
    )
    relax_model = import_network(network, tmp_path_factory.mktemp("tir"))
    module, _ = optimize(relax_model.module, host_target)
    return scheduled_functions(module)


def test_register_tiles_are_stack_arrays(scheduled: dict[str, Any], host_target: Any) -> None:
    assert len(scheduled) == 4
    for name, func in scheduled.items():
        # TVM's own lowering allocates every tile from the workspace pool, per tile...
        assert WORKSPACE_CALL in llvm_ir(func, host_target, "default"), name
        # ...ours keeps it on the stack.
        assert WORKSPACE_CALL not in llvm_ir(func, host_target, register_tir_pipeline()), name


def test_buffers_over_the_cap_stay_in_the_workspace(
    scheduled: dict[str, Any], host_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tir, "MAX_STACK_TILE_BYTES", 0)
    for name, func in scheduled.items():
        assert WORKSPACE_CALL in llvm_ir(func, host_target, register_tir_pipeline()), name


def test_registering_twice_is_harmless() -> None:
    assert register_tir_pipeline() == register_tir_pipeline() == tir.TIR_PIPELINE
    assert tvm.tirx.get_tir_pipeline(tir.TIR_PIPELINE) is not None
