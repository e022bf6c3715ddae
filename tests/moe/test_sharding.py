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
    ("experts_1/gate_up", (3, 8, 32, 2, 16), P(None, "expert", None, None, "model")),  # leading layer axis
    ("experts_1/down", (3, 8, 16, 32), P(None, "expert", "model", None)),
    ("experts_1/gate_up_bias", (3, 8, 2, 16), P(None, "expert", None, "model")),
    ("experts_1/down_bias", (3, 8, 32), P(None, "expert", None)),
    ("experts_1/gate_up", (3, 8, 32, 2, 15), P(None, "expert", None, None, None)),  # "model" does not divide 15
    ("stack_1/moe/router/proj/kernel", (3, 32, 8), P()),
    ("stack_1/moe/shared_expert/up/kernel", (3, 32, 24), P(None, None, "model")),
    ("stack_1/moe/shared_gate/kernel", (3, 32, 1), P()),
    ("stack_0/attn/k/kernel", (2, 32, 16), P(None, None, "model")),
    ("stack_0/attn/k/bias", (2, 16), P(None, "model")),
    ("stack_0/attn/o/kernel", (2, 32, 32), P(None, "model", None)),
    ("stack_0/attn/o/bias", (2, 32), P()),
    ("stack_2/mlp/down/kernel", (1, 24, 32), P(None, "model", None)),
    ("stack_2/input_norm/scale", (1, 32), P()),
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
        partition_spec("experts_0/gate_up", (2, 6, 32, 2, 16), MESH)
    with pytest.raises(ValueError, match="mesh axes"):
        partition_spec("embed", (64, 32), AbstractMesh((2, 4), ("data", "model")))


@pytest.mark.slow
def test_sharded_runs_equal_single_device_runs():
    """tests/helpers/sharded_cases.py: logits, router logits, statistics and steered logits for 8, 2x4 and 2x2x2
    meshes; expert-parallel dispatch; from_pretrained(mesh=...) from HF and converted folders; bad meshes."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE.parent / "helpers" / "sharded_cases.py"), "-p", "no:cacheprovider"],
        cwd=HERE.parents[1], env={**os.environ, "XLA_FLAGS": flags}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
