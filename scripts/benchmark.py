#!/usr/bin/env python
"""JAX vs HF transformers (PyTorch) on the same MoE configs, inputs and machine, measured in one run.

Measures, per config: forward tokens/s of both (median and min-max over the repetitions) and their peak
memory during the forward; analysis-mode tokens/s (router logits only) against HF's forward; the
steered/unsteered time ratio; compile time for 8 vs 48 layers; achieved matmul FLOP/s as a fraction of this
machine's peak matmul FLOP/s measured in the same run; conversion throughput and peak resident memory against
the checkpoint size. Prints pass/fail lines for the project's targets (only from 3 or more repetitions) and
writes everything to a JSON file.

Peak memory is the device's peak bytes in use on an accelerator, and on CPU the process's peak resident set
(VmHWM, reset before each measured framework), so it includes the framework's own runtime. HF runs and is
freed before the JAX model is loaded, so neither peak holds the other's weights.

The evaluation benchmark (``--only eval``; also part of the default ``--only all``) runs on a tiny
OLMoE-shaped config (hidden 64, vocabulary 50304): multiple-choice scoring tokens/s against the plain
forward's tokens/s over the same tokens, and greedy generation tokens/s against HF ``generate`` on the
same prompts. It reports the median and min-max over ``--reps`` repetitions and gives no verdict from
fewer than 3.

The dispatch sweep (``--dispatch-sweep``) times dense vs blocked ``expert_ffn``, forward and forward+backward,
interleaved, on a grid of shapes, each in a memory-limited process of its own: the measurements behind
``moe.dispatch.choose`` on CPU.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from moe.dispatch import DISPATCH_MODES
from routing.outputs.files import write_json

CONFIGS = {
    "olmoe": dict(family="olmoe", hidden=1024, layers=8, heads=16, kv_heads=16, experts=64, top_k=8,
                  expert_size=512, vocab=50304),
    "qwen3": dict(family="qwen3_moe", hidden=1024, layers=8, heads=16, kv_heads=4, experts=128, top_k=8,
                  expert_size=256, vocab=50304),
    # Qwen3-30B-A3B's real layer shape (2 of its 48 layers; a small vocabulary instead of 151936)
    "qwen3_30b": dict(family="qwen3_moe", hidden=2048, layers=2, heads=32, kv_heads=4, head_dim=128, experts=128,
                      top_k=8, expert_size=768, vocab=8192),
}
EVAL_SPEC = dict(family="olmoe", hidden=64, layers=4, heads=4, kv_heads=4, experts=8, top_k=2, expert_size=64,
                 vocab=50304)
EVAL_TARGETS = {"scoring_vs_forward": 0.7}
MIN_VERDICT_REPS = 3
TARGETS = {"forward_speedup": 2.0, "analysis_speedup": 3.0, "steering_overhead": 0.03, "peak_fraction": 0.70,
           "conversion_memory_ratio": 1.3}


def hf_config(spec: dict, layers: int):
    import transformers
    common = dict(vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=layers,
                  num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                  num_experts_per_tok=spec["top_k"], max_position_embeddings=4096)
    if spec["family"] == "olmoe":
        config = transformers.OlmoeConfig(**common, num_experts=spec["experts"], intermediate_size=spec["expert_size"])
    else:
        config = transformers.Qwen3MoeConfig(**common, num_experts=spec["experts"],
                                             moe_intermediate_size=spec["expert_size"], intermediate_size=2048,
                                             head_dim=head_dim(spec), norm_topk_prob=True)
    config._attn_implementation = "eager"
    return config


def head_dim(spec: dict) -> int:
    return spec.get("head_dim", spec["hidden"] // spec["heads"])


def hf_model(spec: dict, dtype):
    """A random HF model of the spec (eager attention, default experts implementation)."""
    import torch
    import transformers
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(hf_config(spec, spec["layers"]), dtype=dtype).eval()


def timed(fn, reps: int) -> list[float]:
    """Seconds of each of `reps` runs of fn(), after one warm-up run."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def rates(amount: float, times: list[float]) -> dict:
    """amount / seconds: median, min and max over the repetitions."""
    values = sorted(amount / t for t in times)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "reps": len(values)}


def _status_kb(key: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


def reset_peak_rss() -> None:
    """Restart the process's peak resident set (VmHWM) from the current one (Linux: /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory(fn, device: str, framework: str) -> dict:
    """Run fn() once and report the peak memory it reached: accelerator bytes in use, or on CPU the process's
    peak resident set since a reset just before."""
    if device == "cpu":
        gc.collect()
        reset_peak_rss()
        fn()
        return {"kind": "process peak RSS", "bytes": _status_kb("VmHWM") * 1024}
    if framework == "hf":
        import torch
        torch.cuda.reset_peak_memory_stats()
        fn()
        return {"kind": "torch.cuda.max_memory_allocated", "bytes": torch.cuda.max_memory_allocated()}
    fn()
    stats = jax.devices()[0].memory_stats() or {}
    return {"kind": "device peak_bytes_in_use", "bytes": stats.get("peak_bytes_in_use", 0)}


def peak_matmul_flops(dtype, reps: int) -> float:
    """This machine's matmul FLOP/s through XLA on a large square product."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(timed(lambda: f(a).block_until_ready(), max(reps, 3)))
    return 2 * n**3 / best


def useful_flops(spec: dict, tokens: int, seq: int, analysis: bool = False) -> float:
    """Matmul FLOPs the forward must do: attention projections and scores, top-k experts, LM head."""
    h, d = spec["hidden"], head_dim(spec)
    qkvo = 2 * h * (2 * spec["heads"] * d + 2 * spec["kv_heads"] * d)
    scores = 2 * 2 * spec["heads"] * d * seq / 2  # causal: half of QK^T and PV on average
    experts = 2 * 3 * h * spec["expert_size"] * spec["top_k"] + 2 * h * spec["experts"]
    layers = spec["layers"] * (qkvo + scores + experts)
    head = 0 if analysis else 2 * h * spec["vocab"]
    return tokens * (layers + head)


def compile_seconds(spec: dict, layers: int, batch: int, seq: int, dtype) -> float:
    """Seconds to lower and compile the forward of a `layers`-deep version of the spec (no weights needed)."""
    from moe.families import config_from_hf
    from moe.model import MoeTransformer
    config = config_from_hf(hf_config(spec, layers).to_diff_dict())
    model = MoeTransformer(config, dtype=dtype)
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32)))["params"]
    start = time.perf_counter()
    jax.jit(lambda p, i: model.apply({"params": p}, i)).lower(params, ids).compile()
    return time.perf_counter() - start


def conversion_probe(folder: Path, dtype_name: str) -> dict:
    """Convert in a fresh process; report seconds and peak resident memory (VmHWM) above the post-import RSS."""
    code = (
        "import sys, time, jax, jax.numpy as jnp\n"
        "from moe.convert import from_pretrained\n"
        "def kb(key): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key))\n"
        "base = kb('VmRSS')\n"
        "t = time.perf_counter()\n"
        f"model, params = from_pretrained(sys.argv[1], dtype=jnp.{dtype_name})\n"
        "jax.block_until_ready(params)\n"
        "print(time.perf_counter() - t, base, kb('VmHWM'))\n")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    seconds, base_kb, peak_kb = out.stdout.split()[-3:]
    return {"seconds": float(seconds), "peak_rss_above_baseline_bytes": (int(peak_kb) - int(base_kb)) * 1024}


def bench_config(name: str, spec: dict, args, peak: float) -> dict:
    import torch
    import moe
    from routing import steering
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    device = "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"
    rng = np.random.RandomState(0)
    ids = rng.randint(0, spec["vocab"], (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = args.batch * args.seq
    result: dict = {"config": spec, "batch": args.batch, "seq": args.seq, "device": device, "reps": args.reps}
    with tempfile.TemporaryDirectory() as tmp:
        hf = hf_model(spec, torch_dtype)
        hf.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        hf = hf.to(device)
        t_ids, t_mask = torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(mask, device=device)

        def hf_forward():
            with torch.no_grad():
                hf(t_ids, attention_mask=t_mask, output_router_logits=True)
            if device == "cuda":
                torch.cuda.synchronize()

        t_hf = timed(hf_forward, args.reps)
        result["hf_memory"] = peak_memory(hf_forward, device, "hf")
        del hf, hf_forward
        gc.collect()
        probe = conversion_probe(Path(tmp), args.dtype)
        result["conversion"] = {**probe, "checkpoint_bytes": size, "bytes_per_second": size / probe["seconds"],
                                "memory_ratio": probe["peak_rss_above_baseline_bytes"] / size}
        model, params = moe.from_pretrained(tmp, dtype=jdtype, dispatch=args.dispatch)

    forward = jax.jit(lambda p, i, m, e: model.apply({"params": p}, i, m, edit=e))
    analysis = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m, analysis_only=True).router_logits)
    c = model.config
    window = range(c.num_moe_layers // 4, 3 * c.num_moe_layers // 4)
    edit = steering.soft(c.num_moe_layers, c.num_experts, {layer: list(range(0, c.num_experts, 8)) for layer in window},
                         lam=0.5)
    t_fwd = timed(lambda: forward(params, ids, mask, None).logits.block_until_ready(), args.reps)
    result["jax_memory"] = peak_memory(lambda: forward(params, ids, mask, None).logits.block_until_ready(), device,
                                       "jax")
    t_steer = timed(lambda: forward(params, ids, mask, edit).logits.block_until_ready(), args.reps)
    t_ana = timed(lambda: analysis(params, ids, mask).block_until_ready(), args.reps)
    hf_med, fwd_med = statistics.median(t_hf), statistics.median(t_fwd)
    result |= {
        "hf_forward_tokens_per_s": rates(tokens, t_hf), "jax_forward_tokens_per_s": rates(tokens, t_fwd),
        "jax_analysis_tokens_per_s": rates(tokens, t_ana), "forward_speedup": hf_med / fwd_med,
        "analysis_speedup": hf_med / statistics.median(t_ana),
        "steering_overhead": statistics.median(t_steer) / fwd_med - 1, "peak_matmul_flops": peak,
        "forward_flops_per_s": useful_flops(spec, tokens, args.seq) / fwd_med,
        "weights_bytes": sum(x.nbytes for x in jax.tree.leaves(params)),
    }
    result["peak_fraction"] = result["forward_flops_per_s"] / peak
    if not args.skip_compile:
        result["compile_seconds"] = {str(n): compile_seconds(spec, n, args.batch, args.seq, jdtype) for n in (8, 48)}
    return result


def layer_inputs(tokens: int, hidden: int, experts: int, top_k: int, expert_size: int,
                 layers: int | None = None) -> tuple:
    """Random inputs of one MoE layer: x [T, D], weights and index [T, k] (top-k of random logits, equal
    weights) and fused expert params, stacked [layers, E, ...] when `layers` is given."""
    rng = np.random.default_rng(0)
    stack = (layers,) if layers else ()
    x = jnp.asarray(rng.standard_normal((tokens, hidden)), jnp.float32)
    index = jnp.asarray(np.argsort(-rng.standard_normal((tokens, experts)), -1)[:, :top_k], jnp.int32)
    weights = jnp.full((tokens, top_k), 1.0 / top_k, jnp.float32)
    p = {"gate_up": jnp.asarray(0.02 * rng.standard_normal((*stack, experts, hidden, 2, expert_size)), jnp.float32),
         "down": jnp.asarray(0.02 * rng.standard_normal((*stack, experts, expert_size, hidden)), jnp.float32)}
    return x, weights, index, p


def block_sweep(spec: dict, tokens: int, reps: int, blocks=(16, 32, 64, 128)) -> dict[str, dict]:
    """Seconds (median, min, max) of one MoE layer's blocked dispatch at each block size: the spec's expert
    shape, `tokens` tokens routed top-k by random logits, experts read in place from a stack of 2 layers."""
    from moe.dispatch import blocked_ffn
    from moe.model import swiglu
    x, weights, index, p = layer_inputs(tokens, spec["hidden"], spec["experts"], spec["top_k"], spec["expert_size"],
                                        layers=2)
    out = {}
    for block in blocks:
        fn = jax.jit(lambda x, w, i, p, l, block=block: blocked_ffn(x, w, i, p, swiglu, l, block))
        times = sorted(timed(lambda: fn(x, weights, index, p, jnp.int32(1)).block_until_ready(), reps))
        out[str(block)] = {"median": statistics.median(times), "min": times[0], "max": times[-1]}
    return out


# The dispatch sweep's grid: tokens, (experts, top-k) and (hidden, expert size)
SWEEP_TOKENS = (64, 512, 2048, 16384)
SWEEP_ROUTING = ((8, 2), (64, 8), (128, 8))
SWEEP_SIZES = ((64, 64), (2048, 768))
SWEEP_MEMORY_BYTES = 4 * 2**30  # dense intermediates (estimated) beyond which a shape is skipped
SWEEP_PROCESS_BYTES = 8 * 2**30  # each shape's process is limited to this much data (RLIMIT_DATA)


def dense_cost(tokens: int, experts: int, hidden: int, expert_size: int, training: bool) -> tuple[float, float]:
    """(FLOPs, bytes of float32 intermediates) of the dense dispatch: every expert's gate/up [D, 2F] and down
    [F, D] matmuls on every token, times 3 with the backward (which also keeps the forward's activations)."""
    flops = 6.0 * tokens * experts * hidden * expert_size
    activations = 4.0 * experts * tokens * (3 * expert_size + hidden)
    return (3 * flops, 2 * activations) if training else (flops, activations)


def paired_times(fns: dict[str, Callable[[], Any]], reps: int, min_seconds: float = 0.05) -> dict[str, list[float]]:
    """Seconds per call of each fn, interleaved: every repetition runs each fn once more (alternating the
    order), so a change in the machine's load falls on all of them alike. Each repetition of a fn repeats it
    enough times to last about `min_seconds`. One warm-up call each (compilation) first."""
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(reps):
        for name in (list(fns) if rep % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


def _time_shape(send, shape: dict, reps: int, limit_s: float, memory_bytes: int) -> None:
    """In a process of its own, limited to `memory_bytes` of data: dense and blocked `expert_ffn` on one shape
    of the sweep. Sends ("ready",) once its inputs are made, ("first", mode, seconds) after each path's first
    call (compilation included), then ("times", {mode: seconds per call}) from `paired_times`, unless a first
    call took over `limit_s`."""
    import resource
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    from moe.dispatch import expert_ffn
    from moe.model import swiglu
    x, weights, index, p = layer_inputs(shape["tokens"], shape["hidden"], shape["experts"], shape["top_k"],
                                        shape["expert_size"])
    fns = {}
    for mode in ("dense", "blocked"):
        def loss(x, p, weights, index, mode=mode):  # all arguments: XLA must not fold the routing in
            return jnp.sum(expert_ffn(x, weights, index, p, swiglu, mode))
        fn = jax.jit(jax.grad(loss, argnums=(0, 1)) if shape["training"] else loss)
        fns[mode] = lambda fn=fn: jax.block_until_ready(fn(x, p, weights, index))
    send.send(("ready",))
    first = {}
    for mode, fn in fns.items():
        start = time.perf_counter()
        fn()
        first[mode] = time.perf_counter() - start
        send.send(("first", mode, first[mode]))
    if max(first.values()) <= limit_s:
        send.send(("times", paired_times(fns, reps)))


def time_shape(shape: dict, reps: int, limit_s: float) -> dict:
    """`_time_shape` in a fresh process: the row of the sweep it gives. A path still in its first call
    3 x `limit_s` seconds after the last message (the process gets 10 minutes to start) is stopped, and so is
    the repetition phase after 2 (reps + 1) x `limit_s`; either, or the process failing (out of memory), is
    recorded."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_time_shape, args=(send, shape, reps, limit_s, SWEEP_PROCESS_BYTES))
    process.start()
    send.close()
    row, first, timeout = dict(shape), {}, 600.0
    while True:
        if not receive.poll(timeout):
            row["stopped"] = f"stopped after {timeout:.0f} s"
            break
        try:
            kind, *value = receive.recv()
        except EOFError:  # the process ended: a first call over the limit, or a failure
            process.join()
            if process.exitcode:
                row["stopped"] = f"process failed (exit code {process.exitcode}; out of memory?)"
            break
        if kind == "times":
            times = value[0]
            row |= {mode: {"median": statistics.median(t), "min": min(t), "max": max(t)} for mode, t in times.items()}
            row["blocked_over_dense"] = ratio_spread(times["dense"], times["blocked"])
            break
        if kind == "first":
            first[value[0]] = value[1]
        timeout = 2 * (reps + 1) * limit_s if len(first) == 2 else 3 * limit_s
    process.kill()
    process.join()
    return row if "blocked_over_dense" in row else row | {"first_call": first}


def dispatch_sweep(reps: int, flops_per_s: float, limit_s: float) -> list[dict]:
    """Dense vs blocked `expert_ffn` on the grid SWEEP_TOKENS x SWEEP_ROUTING x SWEEP_SIZES, forward alone and
    forward+backward (the gradient of the output's sum w.r.t. x and the expert params), timed interleaved,
    each shape in a process of its own (`time_shape`). A shape is skipped where the dense call would take
    over `limit_s` seconds at `flops_per_s`, or its intermediates would need over SWEEP_MEMORY_BYTES; where
    a path's first call (compilation included) takes over `limit_s`, only the first calls are reported."""
    rows = []
    for (hidden, expert_size), (experts, top_k), tokens, training in itertools.product(
            SWEEP_SIZES, SWEEP_ROUTING, SWEEP_TOKENS, (False, True)):
        shape = dict(tokens=tokens, experts=experts, top_k=top_k, hidden=hidden, expert_size=expert_size,
                     training=training)
        flops, memory = dense_cost(tokens, experts, hidden, expert_size, training)
        if flops / flops_per_s > limit_s or memory > SWEEP_MEMORY_BYTES:
            rows.append(shape | {"skipped": f"dense ~{flops / flops_per_s:.0f} s, {memory / 2**30:.1f} GiB"})
        else:
            rows.append(time_shape(shape, reps, limit_s))
        print(sweep_line(rows[-1]), flush=True)
    return rows


def sweep_line(row: dict) -> str:
    """One row of the dispatch sweep: milliseconds per call, median (min-max), and which path was faster."""
    shape = (f"T={row['tokens']:>5} E={row['experts']:>3} k={row['top_k']} D={row['hidden']:>4} "
             f"F={row['expert_size']:>3} {'fwd+bwd' if row['training'] else 'fwd    '}")
    if "skipped" in row:
        return f"{shape}  skipped ({row['skipped']})"
    if "first_call" in row:
        first = row["first_call"]
        calls = ", ".join(f"{mode} {seconds:.3g} s" for mode, seconds in first.items())
        faster = min(first, key=first.get) if len(first) == 2 else next(iter(first), "none measured")
        return (f"{shape}  first calls only, compilation included: {calls}"
                f"{'; ' + row['stopped'] if 'stopped' in row else ''}  -> {faster}")
    ms = {mode: "{:.3g} ms ({:.3g}-{:.3g})".format(*(1e3 * row[mode][key] for key in ("median", "min", "max")))
          for mode in ("dense", "blocked")}
    ratio = row["blocked_over_dense"]
    return (f"{shape}  dense {ms['dense']}  blocked {ms['blocked']}  "
            f"blocked/dense {spread(ratio, 'x')}  -> {'dense' if ratio['median'] > 1 else 'blocked'}")


def verdicts(name: str, r: dict) -> list[str]:
    """PASS/FAIL per target; none from fewer than MIN_VERDICT_REPS repetitions."""
    if r["reps"] < MIN_VERDICT_REPS:
        return [f"{name}: PASS/FAIL not shown: {r['reps']} repetition{'s' * (r['reps'] != 1)} "
                f"(at least {MIN_VERDICT_REPS} needed)"]
    t = TARGETS
    checks = [
        ("forward_speedup", r["forward_speedup"] >= t["forward_speedup"],
         f"{r['forward_speedup']:.2f}x >= {t['forward_speedup']}x"),
        ("analysis_speedup", r["analysis_speedup"] >= t["analysis_speedup"],
         f"{r['analysis_speedup']:.2f}x >= {t['analysis_speedup']}x"),
        ("steering_overhead", r["steering_overhead"] <= t["steering_overhead"],
         f"{100 * r['steering_overhead']:.1f}% <= {100 * t['steering_overhead']:.0f}%"),
        ("peak_fraction", r["peak_fraction"] >= t["peak_fraction"],
         f"{100 * r['peak_fraction']:.0f}% >= {100 * t['peak_fraction']:.0f}%"),
        ("conversion_memory", r["conversion"]["memory_ratio"] <= t["conversion_memory_ratio"],
         f"{r['conversion']['memory_ratio']:.2f}x <= {t['conversion_memory_ratio']}x"),
    ]
    return [f"{'PASS' if ok else 'FAIL'} {name} {what}: {text}" for what, ok, text in checks]


def summary(name: str, r: dict) -> str:
    """One line per config: medians with min-max over the repetitions, and peak memory."""
    gib = 2.0 ** 30
    return (f"{name}: HF {spread(r['hf_forward_tokens_per_s'])} tok/s, peak {r['hf_memory']['bytes'] / gib:.2f} GiB "
            f"| JAX {spread(r['jax_forward_tokens_per_s'])} tok/s, peak {r['jax_memory']['bytes'] / gib:.2f} GiB "
            f"({r['jax_memory']['kind']}) | JAX/HF {r['forward_speedup']:.2f}x "
            f"| analysis {spread(r['jax_analysis_tokens_per_s'])} tok/s ({r['analysis_speedup']:.2f}x HF) "
            f"| steered/unsteered {1 + r['steering_overhead']:.3f} "
            f"| {r['forward_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * r['peak_fraction']:.0f}% of peak "
            f"| conversion {r['conversion']['bytes_per_second'] / 1e6:.0f} MB/s, "
            f"peak RSS {r['conversion']['memory_ratio']:.2f}x checkpoint"
            + (f" | compile 8L {r['compile_seconds']['8']:.1f}s, 48L {r['compile_seconds']['48']:.1f}s"
               if "compile_seconds" in r else ""))


def ratio_spread(numerator: list[float], denominator: list[float]) -> dict:
    """Time ratio denominator / numerator (a speed ratio) of paired repetitions: median and range."""
    ratios = sorted(d / n for n, d in zip(numerator, denominator))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "reps": len(ratios)}


def mc_items(rng: np.random.RandomState, count: int, options: str, vocab: int) -> list:
    """BELEBELE-shaped items of random tokens: prompts of 100-400 tokens, four options of one token
    (``options="letter"``) or of 2-24 tokens (``"text"``)."""
    from routing.eval.multiple_choice import EncodedItem

    def option() -> list[int]:
        length = 1 if options == "letter" else rng.randint(2, 25)
        return rng.randint(1, vocab, length).tolist()

    return [EncodedItem(rng.randint(1, vocab, rng.randint(100, 401)).tolist(), [option() for _ in range(4)])
            for _ in range(count)]


def bench_eval(args) -> dict:
    """Scoring vs plain forward, and greedy generation vs HF generate, on EVAL_SPEC in float32."""
    import torch
    import moe
    from moe.generate import generate
    from routing.data.tokenize import bucket_batches, length_buckets
    from routing.eval.multiple_choice import score_options
    hf = hf_model(EVAL_SPEC, torch.float32)
    hf.generation_config.eos_token_id = None  # both sides generate exactly max_new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model, params = moe.from_pretrained(tmp)
    forward = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).logits)
    rng = np.random.RandomState(0)
    result: dict = {"config": EVAL_SPEC, "items": args.eval_items, "batch": args.batch}
    for style in ("letter", "text"):
        items = mc_items(rng, args.eval_items, style, EVAL_SPEC["vocab"])
        rows = [item.prompt + [t for option in item.options for t in option] for item in items]
        tokens = sum(len(row) for row in rows)
        batches = bucket_batches(rows, range(len(rows)), batch_size=args.batch, buckets=length_buckets(1024))

        def plain() -> None:
            for b in batches:
                forward(params, b.input_ids, b.attention_mask).block_until_ready()

        def scoring() -> None:
            score_options(model, params, items, batch_size=args.batch, buckets=length_buckets(512))

        t_plain, t_score = timed(plain, args.reps), timed(scoring, args.reps)
        result[f"scoring_{style}"] = {"tokens": tokens, "forward_tokens_per_s": rates(tokens, t_plain),
                                      "scoring_tokens_per_s": rates(tokens, t_score),
                                      "scoring_vs_forward": ratio_spread(t_score, t_plain)}
    new_tokens = args.eval_new_tokens
    lengths = rng.randint(40, 121, args.batch)
    ids = np.zeros((args.batch, int(lengths.max())), np.int32)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, -length:] = rng.randint(1, EVAL_SPEC["vocab"], length)
        mask[row, -length:] = 1
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def hf_generate() -> np.ndarray:
        with torch.no_grad():
            return hf.generate(t_ids, attention_mask=t_mask, do_sample=False, max_new_tokens=new_tokens,
                               pad_token_id=0)[:, ids.shape[1]:].numpy()

    def jax_generate() -> np.ndarray:
        return np.asarray(generate(model, params, ids, mask, max_new_tokens=new_tokens).tokens)

    t_hf, t_jax = timed(hf_generate, args.reps), timed(jax_generate, args.reps)
    generated = args.batch * new_tokens
    result["generation"] = {"prompt_lengths": lengths.tolist(), "new_tokens": new_tokens,
                            "hf_tokens_per_s": rates(generated, t_hf),
                            "jax_tokens_per_s": rates(generated, t_jax),
                            "jax_vs_hf": ratio_spread(t_jax, t_hf),
                            "same_tokens": float(np.mean(hf_generate() == jax_generate()))}
    return result


def spread(s: dict, unit: str = "") -> str:
    """Median (min-max); rates as whole numbers, ratios (unit "x") with two decimals."""
    digits = 2 if unit == "x" else 0
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def eval_lines(r: dict) -> list[str]:
    """The evaluation results, and a verdict per target only with >= MIN_VERDICT_REPS repetitions."""
    lines = [f"evaluation benchmark: median (min-max) over {r['generation']['jax_tokens_per_s']['reps']} repetitions"]
    for style in ("letter", "text"):
        s = r[f"scoring_{style}"]
        lines.append(f"multiple choice ({style} options, {s['tokens']} tokens): scoring "
                     f"{spread(s['scoring_tokens_per_s'])} tok/s, plain forward {spread(s['forward_tokens_per_s'])}"
                     f" tok/s, ratio {spread(s['scoring_vs_forward'], 'x')}")
    g = r["generation"]
    lines.append(f"greedy generation ({r['batch']} prompts x {g['new_tokens']} new tokens): JAX "
                 f"{spread(g['jax_tokens_per_s'])} tok/s, HF generate {spread(g['hf_tokens_per_s'])} tok/s, "
                 f"JAX/HF {spread(g['jax_vs_hf'], 'x')}; {100 * g['same_tokens']:.0f}% of tokens identical")
    target = EVAL_TARGETS["scoring_vs_forward"]
    for style in ("letter", "text"):
        ratio = r[f"scoring_{style}"]["scoring_vs_forward"]
        if ratio["reps"] < MIN_VERDICT_REPS:
            lines.append(f"NO VERDICT scoring_vs_forward ({style}): {ratio['reps']} repetition(s); "
                         f"a verdict needs --reps >= {MIN_VERDICT_REPS}")
        else:
            verdict = "PASS" if ratio["median"] >= target else "FAIL"
            lines.append(f"{verdict} scoring_vs_forward ({style}): median {ratio['median']:.2f}x >= {target}x "
                         f"(range {ratio['min']:.2f}-{ratio['max']:.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="olmoe,qwen3", help=f"comma list of {sorted(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3,
                        help=f"timed repetitions (after a warm-up); PASS/FAIL needs {MIN_VERDICT_REPS} or more")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--dispatch", choices=list(DISPATCH_MODES), default="auto",
                        help="expert dispatch implementation of the JAX model")
    parser.add_argument("--skip-compile", action="store_true", help="skip the 8 vs 48 layer compile measurement")
    parser.add_argument("--block-sweep", action="store_true",
                        help="only time one layer's blocked dispatch per block size for each config, then exit")
    parser.add_argument("--dispatch-sweep", action="store_true",
                        help="only time dense vs blocked expert_ffn (forward, forward+backward) on a grid of "
                             "shapes, then exit: the measurements behind moe.dispatch.choose")
    parser.add_argument("--sweep-limit", type=float, default=20.0,
                        help="seconds: the dispatch sweep skips shapes whose dense call would take longer")
    parser.add_argument("--only", choices=["all", "forward", "eval"], default="all",
                        help="forward: JAX vs HF forward per config; eval: multiple-choice scoring and generation")
    parser.add_argument("--eval-items", type=int, default=64, help="multiple-choice items per option style")
    parser.add_argument("--eval-new-tokens", type=int, default=32, help="new tokens per prompt (generation)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark.json"))
    args = parser.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown or not names:
        parser.error(f"unknown or empty --configs {unknown or names}; choose from {sorted(CONFIGS)}")
    for option in ("reps", "eval_items", "eval_new_tokens"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.sweep_limit <= 0:
        parser.error("--sweep-limit must be positive")
    jax.config.update("jax_default_matmul_precision", "highest" if args.dtype == "float32" else "default")
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    forward_runs = names if args.only != "eval" else []
    peak = peak_matmul_flops({"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype], args.reps) \
        if forward_runs else None
    report = {"backend": jax.default_backend(), "jax_version": jax.__version__, "devices": [str(d) for d in jax.devices()], "dtype": args.dtype,
              "dispatch": args.dispatch, "batch": args.batch, "seq": args.seq,
              "peak_matmul_flops": peak, "results": {}}
    print(f"backend {report['backend']} {report['devices'][0]}"
          + (f"; peak matmul {peak / 1e9:.1f} GFLOP/s ({args.dtype})" if forward_runs else "")
          + f"; jax {jax.__version__}; {args.reps} repetitions")
    if args.block_sweep:
        report["block_sweep"] = {}
        for name in names:
            sweep = block_sweep(CONFIGS[name], args.batch * args.seq, args.reps)
            report["block_sweep"][name] = sweep
            print(f"{name} blocked dispatch, one layer, {args.batch * args.seq} tokens: " + ", ".join(
                f"block {b}: {1e3 * t['median']:.0f} ms ({1e3 * t['min']:.0f}-{1e3 * t['max']:.0f})"
                for b, t in sweep.items()), flush=True)
        forward_runs, args.only = [], "forward"
    if args.dispatch_sweep:
        print("dispatch sweep (float32, one layer's expert_ffn): ms per call, median (min-max) over the "
              "interleaved repetitions", flush=True)
        report["dispatch_sweep"] = dispatch_sweep(args.reps, peak, args.sweep_limit)
        forward_runs, args.only = [], "forward"
    lines = []

    def save() -> None:
        """The report so far, replaced atomically after each stage (a failure later keeps what was measured)."""
        report["verdicts"] = lines
        write_json(args.out, report, indent=2)

    for name in forward_runs:
        r = bench_config(name, CONFIGS[name], args, peak)
        report["results"][name] = r
        print(summary(name, r), flush=True)
        lines += verdicts(name, r)
        save()
    if args.only != "forward":
        report["eval"] = bench_eval(args)
        lines += eval_lines(report["eval"])
    print("\n".join(lines))
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
