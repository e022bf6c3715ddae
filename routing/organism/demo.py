"""The demo pipeline on the model organism: routing analysis, task experts, steering, routing-aware finetuning.

`run_demo(out, settings)` builds its report in a hidden folder beside `out` and swaps it in whole at the end
(`moe.atomic.atomic_folder`), replacing an earlier report, so `out` never mixes files of two runs and an
interrupted run leaves the earlier report as it was. The report holds:
- settings.json: the demo and organism settings and the organism's cache key;
- training.json: the organism's training metrics per step (empty when it came from the cache);
- routing_table.json, divergence.csv: per language and MoE layer, divergence from base (entropy-normalised
  JSD), raw JSD, routing entropy, token-to-token consistency, activation rates;
- divergence.png: divergence over depth per language, middle window shaded;
- window.json: the middle window and whether the mean curve is U-shaped (`u_shape`);
- experts.json: Delta (task minus generic base text) per layer and expert, the task experts, the controls;
- steering.json, steering.csv: task accuracy per language and condition, with Wilson intervals, paired
  bootstrap intervals of the difference from baseline and exact McNemar p-values;
- finetune.json, finetune.csv, finetune_divergence.png: the same after routing-aware finetuning and after
  the control finetuning without the alignment loss (when finetuning is on);
- summary.json, summary.md: the headline numbers and verdicts.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moe.atomic import atomic_folder, atomic_path, check_output_folder
from routing import steering
from routing.analysis import (analyze_corpus, divergence_curves, divergence_intervals, select_middle_window,
                              statistics_fn)
from routing.eval.results import ItemResult, paired_table
from routing.experts import random_experts, select_experts, specialization
from routing.finetune import FinetuneSettings, finetune
from routing.organism.model import (BASE, Organism, OrganismSettings, load_or_train, pair_batch_fn,
                                    parallel_batches, sentence_batches, task_results)
from routing.outputs.cache import default_cache_dir
from routing.outputs.figures import NORMALISED_JSD, RAW_JSD, plot_divergence_curves
from routing.outputs.files import write_csv, write_json
from routing.outputs.tables import routing_table, window_record, write_table_csv
from routing.stats import CorpusRouting
from routing.window import Window

NON_BASE = "non-base"  # the table row pooling every language but base


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    organism: OrganismSettings = OrganismSettings()
    lam: float = 0.5  # soft steering strength
    top_n: int | None = None  # task experts: the top_n largest Delta in the window ...
    tau: float | None = 0.1  # ... or every Delta > tau (give exactly one)
    window: tuple[int, int] | None = None  # MoE layers, inclusive; None: the valley of the measured curve
    window_fraction: float = 0.25  # `select_middle_window` rule
    u_min_rise: float = 0.1  # `u_shape`: both ends must exceed the minimum by this share of the maximum
    task_expert_samples: int = 200  # base task examples used to find task experts
    finetune_steps: int = 100  # 0: no finetuning
    finetune_weight: float = 1.0  # alignment loss weight of the routing-aware run (the control uses 0)
    finetune_pairs: int = 32
    finetune_learning_rate: float = 3e-3
    finetune_router_only: bool = True
    finetune_divergence: str = "jsd"

    def __post_init__(self) -> None:
        steering.finite_float32(self.lam, "lam")
        if self.lam == 0:
            raise ValueError("lam must be non-zero (0 leaves routing unchanged)")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUICK = DemoSettings(  # a smoke test of every step, not a meaningful organism
    organism=OrganismSettings(
        parallel_train=(("base", 300), ("relex", 300), ("verbfinal", 300), ("shared", 300), ("lowres", 40)),
        task_train=(("base", 200), ("relex", 5), ("verbfinal", 5), ("shared", 5), ("lowres", 0)),
        parallel_test=40, task_test=40, bitext_per_language=100, task_repeats=1, num_layers=4, hidden_size=32,
        num_heads=2, expert_size=32, batch_size=16, steps=30, warmup_steps=5),
    task_expert_samples=40, finetune_steps=8, finetune_pairs=8)


def u_shape(curve: np.ndarray, min_rise: float) -> dict[str, Any]:
    """Whether a divergence curve [L] is U-shaped: its minimum lies strictly inside and both the first and
    the last layer exceed the minimum by at least `min_rise` times the curve's maximum."""
    curve = np.asarray(curve, np.float64)
    low = int(np.argmin(curve))
    rises = float(curve[0] - curve[low]), float(curve[-1] - curve[low])
    threshold = min_rise * float(curve.max())
    return {"u_shaped": bool(0 < low < len(curve) - 1 and min(rises) >= threshold), "argmin": low,
            "minimum": float(curve[low]), "rise_first": rises[0], "rise_last": rises[1], "threshold": threshold}


def analyze_languages(organism: Organism, params: Any, stats_fn: Callable) -> dict[str, CorpusRouting]:
    """Routing summaries of the parallel test sentences of every language (keyed by meaning id)."""
    return {lang: analyze_corpus(organism.model, params, parallel_batches(organism, lang), stats_fn=stats_fn)
            for lang in organism.corpus.languages}


def evaluate(organism: Organism, params: Any, edit: Any) -> list[ItemResult]:
    return [r for lang in organism.corpus.languages for r in task_results(organism, lang, params, edit)]


def comparison_rows(base: Sequence[ItemResult], other: Sequence[ItemResult]) -> list[dict[str, Any]]:
    """`paired_table` rows per language, pooled over all languages ("all") and over non-base ones."""
    rows = paired_table(base, other)
    pooled = paired_table([r for r in base if r.language != BASE], [r for r in other if r.language != BASE])
    return rows + [{**pooled[-1], "language": NON_BASE}]


def window_mean(curves: Mapping[str, np.ndarray], window: Window) -> dict[str, float]:
    """Mean divergence inside the window per language, and over all of them (NON_BASE)."""
    means = {lang: window.mean(curve) for lang, curve in curves.items()}
    return means | {NON_BASE: float(np.mean(list(means.values())))}


def _by_language(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {row["language"]: row for row in rows}


def find_task_experts(organism: Organism, stats_fn: Callable, generic: CorpusRouting, settings: DemoSettings,
                      window: Window) -> dict[str, Any]:
    """Delta = r(base task examples) - r(generic base sentences); task experts in the window and controls."""
    examples = organism.corpus.task_train[BASE][:settings.task_expert_samples]
    batches = sentence_batches(organism.tokenizer, [(e.id, BASE, e.text) for e in examples], 100,
                               organism.settings.seq_len)
    task = analyze_corpus(organism.model, organism.params, batches, stats_fn=stats_fn)
    delta = specialization(task.activation_rate, generic.activation_rate)
    num_layers, num_experts = delta.shape
    inside = list(window.layers)
    outside = [layer for layer in range(num_layers) if layer not in inside]
    rule = {"tau": settings.tau} if settings.tau is not None else {"top_n": settings.top_n}
    experts = select_experts(delta, layers=inside, **rule)
    if not experts:  # nothing passes tau: fall back to the single most task-specific expert in the window
        experts = select_experts(delta, top_n=1, layers=inside)
        rule["fallback"] = "no Delta > tau in the window: top_n=1"
    controls = {"random_experts": random_experts(experts, num_experts, organism.settings.seed)}
    if outside:
        controls["outside_window"] = select_experts(delta, top_n=min(len(experts), len(outside) * num_experts),
                                                    layers=outside)
    return {"delta": delta, "rule": rule, "task_experts": experts, "controls": controls}


def _is_report(folder: Path) -> bool:
    """Whether `folder` holds a demo report (its settings.json names an organism)."""
    try:
        return "organism_key" in json.loads((folder / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def check_report_folder(out: str | Path, cache_dir: str | Path | None = None) -> None:
    """Before any work: `out` is new, empty or an earlier demo report (which a run replaces whole), and the
    organism cache folder can be written; errors name the folder as given."""
    check_output_folder(out, may_exist=True)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise FileExistsError(f"{out} holds files that are not a demo report (no settings.json naming an "
                              "organism); choose another report folder: a run replaces the whole folder")
    check_output_folder(default_cache_dir() if cache_dir is None else cache_dir, may_exist=True)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), cache_dir: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole pipeline and write every output into `out` (swapped in whole at the end, see the module
    docstring); returns the summary (also in summary.json)."""
    check_report_folder(out, cache_dir)
    with atomic_folder(out) as build:
        summary = _write_report(build, settings, cache_dir, progress, log)
    log(_summary_markdown(summary))
    log(f"report folder: {Path(out).resolve()}")
    return summary


def _write_report(out: Path, settings: DemoSettings, cache_dir: str | Path | None, progress: bool,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Every step of the pipeline, writing its outputs into `out`; returns the summary."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now

    org = load_or_train(settings.organism, cache_dir, progress=progress)
    write_json(out / "settings.json", {"demo": settings.to_json(), "organism_key": org.key})
    write_json(out / "training.json", {"from_cache": not org.history, "history": org.history})
    lap("organism")
    log(f"organism {org.key} ({'trained' if org.history else 'from cache'}) in {timings['organism']} s")

    config = org.model.config
    stats_fn = statistics_fn(org.model)
    corpora = analyze_languages(org, org.params, stats_fn)
    table = routing_table(corpora, BASE)
    write_json(out / "routing_table.json", table)
    write_table_csv(out / "divergence.csv", table, config.moe_layers)
    curves = divergence_curves(corpora, BASE)
    selected = settings.window is None
    window = select_middle_window(curves, settings.window_fraction) if selected else Window(*settings.window)
    mean_curve = np.mean(np.stack(list(curves.values())), axis=0)
    shape = {"mean": u_shape(mean_curve, settings.u_min_rise)}
    shape |= {lang: u_shape(curve, settings.u_min_rise) for lang, curve in curves.items()}
    write_json(out / "window.json", {**window_record(window, config.moe_layers, selected=selected,
                                                     rule={"fraction": settings.window_fraction},
                                                     mean_curve=mean_curve), "u_shape": shape})
    raw = divergence_curves(corpora, BASE, normalized=False)
    caption = (f"model organism (seed {settings.organism.seed}): synthetic parallel corpus, "
               f"{len(corpora[BASE].keys)} sequences in each of {len(corpora)} languages")
    bands = {measure: divergence_intervals(corpora, BASE, normalized, seed=settings.organism.seed)
             for measure, normalized in ((NORMALISED_JSD, True), (RAW_JSD, False))}
    plot_divergence_curves({NORMALISED_JSD: curves, RAW_JSD: raw}, window, out / "divergence.png", reference=BASE,
                           measure={NORMALISED_JSD: NORMALISED_JSD, RAW_JSD: RAW_JSD}, caption=caption,
                           bands=bands, band_label="95% bootstrap interval over sequences")
    lap("analysis")

    found = find_task_experts(org, stats_fn, corpora[BASE], settings, window)
    write_json(out / "experts.json", {"window": list(window), "rule": found["rule"],
                                      "task_experts": found["task_experts"], "controls": found["controls"],
                                      "delta": found["delta"].round(6).tolist()})
    edits = {"baseline": steering.empty(config), "steered": steering.soft(config, found["task_experts"], settings.lam)}
    edits |= {name: steering.soft(config, pairs, settings.lam) for name, pairs in found["controls"].items()}
    results = {name: evaluate(org, org.params, edit) for name, edit in edits.items()}
    steer_rows = {name: comparison_rows(results["baseline"], results[name]) for name in edits if name != "baseline"}
    write_json(out / "steering.json", {"lam": settings.lam, "conditions": steer_rows})
    write_csv(out / "steering.csv", [{"condition": name, **row} for name, rows in steer_rows.items() for row in rows])
    lap("steering")

    finetuned: dict[str, Any] = {}
    if settings.finetune_steps:
        ft = FinetuneSettings(layers=tuple(window.layers), divergence=settings.finetune_divergence,
                              router_only=settings.finetune_router_only, steps=settings.finetune_steps,
                              learning_rate=settings.finetune_learning_rate)
        others = [lang for lang in org.corpus.languages if lang != BASE]
        panels = {"before finetuning": curves}
        for name, weight in (("routing_aware", settings.finetune_weight), ("plain", 0.0)):
            batch_at = pair_batch_fn(org, others, settings.finetune_pairs, weight, settings.organism.seed)
            params, history = finetune(org.model, org.params, batch_at, ft, progress=progress,
                                       description=f"finetune ({name})")
            after = divergence_curves(analyze_languages(org, params, stats_fn), BASE)
            panels[f"after {name} finetuning"] = after
            scored = evaluate(org, params, edits["baseline"])
            finetuned[name] = {"alignment_weight": weight, "history": history, "divergence": after,
                               "window_divergence": window_mean(after, window), "results": scored,
                               "rows": comparison_rows(results["baseline"], scored)}
        write_json(out / "finetune.json", {
            "settings": dataclasses.asdict(ft), "window_divergence_before": window_mean(curves, window),
            "runs": {name: {**{k: v for k, v in run.items() if k != "results"},
                            "divergence": {k: v.tolist() for k, v in run["divergence"].items()}}
                     for name, run in finetuned.items()},
            "routing_aware_vs_plain": comparison_rows(finetuned["plain"]["results"],
                                                      finetuned["routing_aware"]["results"])})
        write_csv(out / "finetune.csv",
                    [{"run": name, **row} for name, run in finetuned.items() for row in run["rows"]])
        plot_divergence_curves(panels, window, out / "finetune_divergence.png", reference=BASE,
                               measure=NORMALISED_JSD, caption=caption)
        lap("finetune")

    summary = _summary(org, settings, window, shape, curves, len(found["task_experts"]), steer_rows, finetuned,
                       timings)
    write_json(out / "summary.json", summary)
    with atomic_path(out / "summary.md") as temp:
        temp.write_text(_summary_markdown(summary), encoding="utf-8")
    return summary


def _summary(org: Organism, settings: DemoSettings, window: Window, shape: dict[str, Any],
             curves: Mapping[str, np.ndarray], num_task_experts: int, steer_rows: Mapping[str, list],
             finetuned: Mapping[str, Any], timings: Mapping[str, float]) -> dict[str, Any]:
    """Per language: middle-window divergence and accuracy under every condition; pooled verdicts."""
    before = window_mean(curves, window)
    languages = {}
    for lang in [*org.corpus.languages, NON_BASE]:
        steered = _by_language(steer_rows["steered"])[lang]
        entry: dict[str, Any] = {"window_divergence": before.get(lang), "baseline": steered["base_accuracy"]}
        for name, rows in steer_rows.items():
            row = _by_language(rows)[lang]
            entry[name] = row["steer_accuracy"]
            entry[f"{name}_p"] = row["mcnemar_p"]
        for name, run in finetuned.items():
            row = _by_language(run["rows"])[lang]
            entry[f"finetune_{name}"] = row["steer_accuracy"]
            entry[f"finetune_{name}_p"] = row["mcnemar_p"]
            entry[f"finetune_{name}_window_divergence"] = run["window_divergence"].get(lang)
        languages[lang] = entry
    verdicts = {"u_shaped": shape["mean"]["u_shaped"],
                "steering_helps_non_base": _helps(_by_language(steer_rows["steered"])[NON_BASE])}
    if finetuned:
        aware_vs_plain = comparison_rows(finetuned["plain"]["results"], finetuned["routing_aware"]["results"])
        verdicts["routing_aware_beats_plain_finetuning_non_base"] = _helps(_by_language(aware_vs_plain)[NON_BASE])
    return {"organism_key": org.key, "window": list(window), "u_shape": shape["mean"],
            "task_experts": num_task_experts, "verdicts": verdicts,
            "languages": languages, "seconds": dict(timings)}


def _helps(row: Mapping[str, Any]) -> bool:
    """Significantly better (exact McNemar p < 0.05 and a positive difference)."""
    return row["difference"] > 0 and row["mcnemar_p"] < 0.05


def _summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table (accuracy in %, McNemar p in brackets) and the verdicts."""
    langs = summary["languages"]
    columns = [c for c in ("baseline", "steered", "outside_window", "random_experts", "finetune_routing_aware",
                           "finetune_plain") if c in langs[BASE]]
    lines = [f"Middle window (MoE layers): {summary['window'][0]}-{summary['window'][1]}; "
             f"U-shaped mean divergence curve: {summary['u_shape']['u_shaped']} "
             f"(minimum {summary['u_shape']['minimum']:.3f} at layer {summary['u_shape']['argmin']}, "
             f"ends +{summary['u_shape']['rise_first']:.3f} / +{summary['u_shape']['rise_last']:.3f}); "
             f"{summary['task_experts']} task experts.", "",
             "| language | window div. | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for lang, entry in langs.items():
        div = "" if entry["window_divergence"] is None else f"{entry['window_divergence']:.3f}"
        cells = [f"{100 * entry[c]:.1f}" + ("" if c == "baseline" else f" (p={entry[c + '_p']:.2g})") for c in columns]
        lines.append(f"| {lang} | {div} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in %, (p) exact McNemar vs baseline; verdicts need p < 0.05: "
              + ", ".join(f"{k}={v}" for k, v in summary["verdicts"].items()),
              "Seconds: " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())]
    return "\n".join(lines) + "\n"
