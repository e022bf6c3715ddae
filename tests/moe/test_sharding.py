"""Partition rules and mesh errors in this process; sharded runs in a subprocess with 8 simulated CPU devices
(XLA_FLAGS must be set before JAX starts, and the rest of the suite runs on one device)."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from moe.sharding import AXES, make_mesh, partition_spec

HERE = Path(__file__).resolve().parent
MESH = AbstractMesh((2, 4, 2), AXES)  # data 2, expert 4, model 2


@pytest.mark.parametrize(("path", "shape", "spec"), [
    ("layers_3/moe/gate", (8, 32, 16), P("expert", None, "model")),
    ("layers_3/moe/down", (8, 16, 32), P("expert", "model", None)),
    ("layers_3/moe/up_bias", (8, 16), P("expert", "model")),
    ("layers_3/moe/down_bias", (8, 32), P("expert", None)),
    ("layers_3/moe/router/proj/kernel", (32, 8), P()),
    ("layers_3/moe/shared_expert/up/kernel", (32, 24), P(None, "model")),
    ("layers_3/moe/shared_gate/kernel", (32, 1), P()),
    ("layers_0/attn/k/kernel", (32, 16), P(None, "model")),
    ("layers_0/attn/k/bias", (16,), P("model")),
    ("layers_0/attn/o/kernel", (32, 32), P("model", None)),
    ("layers_0/attn/o/bias", (32,), P()),
    ("layers_1/mlp/down/kernel", (24, 32), P("model", None)),
    ("layers_1/input_norm/scale", (32,), P()),
    ("embed", (64, 32), P(None, "model")),
    ("lm_head/kernel", (32, 64), P(None, "model")),
    ("lm_head/kernel", (32, 63), P(None, None)),  # "model" does not divide 63: replicated
])
def test_partition_rules(path, shape, spec):
    assert partition_spec(path, shape, MESH) == spec


def test_bad_meshes_name_the_sizes():
    one = jax.devices()[:1]
    with pytest.raises(ValueError, match=r"data=2 x expert=1 x model=1 = 2 devices, but there are 1"):
        make_mesh(2, devices=one)
    with pytest.raises(ValueError, match=r"expert=2 x model=1 does not divide the 1 devices"):
        make_mesh(expert=2, devices=one)
    with pytest.raises(ValueError, match="expert axis size 4 does not divide the number of experts 6"):
        partition_spec("layers_0/moe/gate", (6, 32, 16), MESH)
    with pytest.raises(ValueError, match="mesh axes"):
        partition_spec("embed", (64, 32), AbstractMesh((2, 4), ("data", "model")))


def test_sharded_runs_equal_single_device_runs():
    """tests/moe/sharded_cases.py: logits, router logits, statistics and steered logits for 8, 2x4 and 2x2x2
    meshes; expert-parallel dispatch; from_pretrained(mesh=...) from HF and converted folders; bad meshes."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "sharded_cases.py"), "-p", "no:cacheprovider"],
        cwd=HERE.parents[1], env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
