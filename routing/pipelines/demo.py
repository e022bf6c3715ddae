"""The paper's claims on the model organism, through the pipelines a real model goes through (scripts/demo.py).

`run_demo(out, settings)` runs, on an organism folder (default: the built-in one, ``moe.organism_path()``) and its
synthetic data (``routing.data.organism``):

1. ``routing/``: analyze_routing on the organism's passages: divergence curves from the base language per MoE
   layer, the middle window (Figure 1). Claim 1 (U shape) is tested on the per-passage divergences
   (``routing.claims.u_shape_claim``).
2. ``correlation/``: correlate, the baseline task accuracy per language against middle-window divergence (claim 2,
   ``routing.claims.correlation_claim``).
3. ``experts/``: find_experts, the task experts in the window.
4. ``steering/<condition>/``: steer_eval for soft steering at each strength of ``lams``, hard steering, and the
   outside-window and random-expert controls (soft, at ``primary_lam``), every condition on the same items as the
   one baseline. Claim 3: soft steering at ``primary_lam`` (fixed before the run, not chosen from the results)
   helps the non-base languages pooled, and beats both controls on the same items (``routing.claims``).
5. ``finetune/``: routing-aware finetuning (router only, the alignment loss on the window's layers) against the
   same finetuning without the alignment loss, both evaluated on every item (beyond the paper).

``summary.json`` and ``summary.md`` give each claim's verdict with its test, interval and p-value. The report is
built beside ``out`` and swapped in whole at the end (`moe.atomic.atomic_folder`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

import moe
from moe.atomic import atomic_folder, atomic_path, check_output_folder
from moe.builtin import builtin_path
from routing import claims, steering
from routing.analysis import divergence_curves, select_middle_window, sequence_divergences, statistics_fn
from routing.data.organism import organism_folder, read_organism
from routing.data.tokenize import pad_rows
from routing.eval.results import ItemResult, paired_table
from routing.eval.tasks import EvalSettings, load_task, run_task
from routing.finetune import FinetuneSettings, finetune
from routing.organism.synthetic import build_from_spec
from routing.outputs.figures import NORMALISED_JSD, plot_divergence_curves
from routing.outputs.files import write_csv, write_json
from routing.outputs.store import ItemStore
from routing.pipelines import analyze_routing, correlate, steer_eval
from routing.pipelines.experts_file import ExpertSettings
from routing.pipelines.find_experts import run_expert_search
from routing.pipelines.passages import route_languages
from routing.window import Window

TASK = "organism"
REPORT = "moe-routing organism demo/1"  # summary.json's "report": marks a folder a run may replace
NON_BASE = "non-base"  # rows pooling every language but the base


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. ``model``: an organism folder (None: the built-in organism). ``limit``: task items per
    language (None: all). ``window`` "A:B" (MoE layers) overrides the selected window. Task experts: the experts
    whose Delta exceeds ``tau`` in the window, or the ``top_n`` largest (give exactly one). ``n_boot``: bootstrap
    resamples of every interval."""

    model: str | None = None
    seed: int = 0
    lams: tuple[float, ...] = (0.25, 0.5, 1.0)
    primary_lam: float = 0.5
    window: str | None = None
    tau: float | None = 0.05
    top_n: int | None = None
    expert_samples: int = 500
    limit: int | None = None
    max_passages: int | None = None
    batch_size: int = 128
    finetune_steps: int = 100
    finetune_pairs: int = 32
    finetune_learning_rate: float = 3e-3
    finetune_weight: float = 1.0
    n_boot: int = 2000
    alpha: float = claims.ALPHA
    tfds_dir: Path | None = None  # where TFDS prepares the organism's data (None: the default cache)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lams", tuple(float(lam) for lam in self.lams))
        if self.primary_lam not in self.lams:
            raise ValueError(f"primary_lam {self.primary_lam} must be one of lams {self.lams}")
        if any(lam == 0 for lam in self.lams):
            raise ValueError("a soft steering strength of 0 leaves routing unchanged")
        if (self.tau is None) == (self.top_n is None):
            raise ValueError("give exactly one of tau and top_n (the task-expert rule)")
        if self.n_boot < 100:
            raise ValueError(f"n_boot must be >= 100 (bootstrap p-values are at least 1 / (n_boot + 1)), got "
                             f"{self.n_boot}")
        for name in ("batch_size", "expert_samples", "finetune_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 (or None for all items), got {self.limit}")
        if self.finetune_steps < 0 or not 0 < self.alpha < 1:
            raise ValueError(f"need finetune_steps >= 0 and alpha in (0, 1), got {self.finetune_steps}, {self.alpha}")

    @property
    def folder(self) -> Path:
        """The organism folder, absolute: the built-in one for None or the name "organism", else ``model`` as a
        path (so "./organism" is the local folder for the data and the weights alike)."""
        return (builtin_path(self.model) if self.model is not None else None) or organism_folder(self.model).absolute()

    def eval_settings(self) -> EvalSettings:
        """Greedy, plain prompts; the answer is the one token generated after "<answer>" (the organism writes every
        answer as one number token), the measure training reports in organism.json."""
        return EvalSettings(chat=False, batch_size=self.batch_size, max_new_tokens=1, limit=self.limit,
                            seed=self.seed, max_length=256)


def conditions(settings: DemoSettings) -> dict[str, dict[str, Any]]:
    """Steering condition name -> steer_eval options (mode, lam, control)."""
    out = {f"soft_{lam:g}": {"mode": "soft", "lam": lam} for lam in settings.lams}
    out["hard"] = {"mode": "hard", "lam": None}
    out["outside_window"] = {"mode": "soft", "lam": settings.primary_lam, "control": "outside-window"}
    out["random_experts"] = {"mode": "soft", "lam": settings.primary_lam, "control": "random"}
    return out


def _is_report(folder: Path) -> bool:
    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("report") == REPORT
    except (OSError, ValueError, AttributeError):
        return False


def read_report(folder: str | Path) -> dict[str, Any]:
    """The summary.json of a demo report folder; ValueError naming the folder otherwise."""
    if not _is_report(Path(folder)):
        raise ValueError(f"{folder} is not a demo report (no summary.json written by scripts/demo.py)")
    return json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))


def check_demo(out: Path, settings: DemoSettings) -> dict[str, Any]:
    """Before any work: ``out`` is new, empty or an earlier demo report (which a run replaces whole), and the model
    is an organism folder (its window checked); returns its organism.json."""
    check_output_folder(out, may_exist=True)
    if out.is_dir() and any(out.iterdir()) and not _is_report(out):
        raise FileExistsError(f"{out} holds files that are not a demo report (no summary.json of one); choose "
                              "another report folder: a run replaces the whole folder")
    record = read_organism(settings.folder)
    config = moe.load_config(str(settings.folder))[1]
    if settings.window is not None:
        Window.parse(settings.window).check(config.num_moe_layers)
    return record


def middle_window(curves: Mapping[str, np.ndarray], window: str | None, fraction: float) -> Window:
    """``window`` ("A:B") if given, else the valley of the mean curve (``select_middle_window``) searched only in the
    middle layers of the U-shape test (``routing.claims.regions``), so the steered and aligned window is never an
    end layer that a zig-zag curve happens to dip at."""
    layers = len(next(iter(curves.values())))
    if window is not None:
        return Window.parse(window).check(layers)
    first, last = claims.regions(layers)["middle"]
    inner = select_middle_window({lang: np.asarray(c)[first:last + 1] for lang, c in curves.items()}, fraction)
    return Window(inner.first + first, inner.last + first)


def outcome_table(results: Sequence[ItemResult], languages: Sequence[str]) -> np.ndarray:
    """0/1 outcomes [problems, languages] (problems in id order): one row per problem, its translations side by
    side; ValueError unless every problem is scored in every language once."""
    cells = {item.key: item.correct for item in results if item.language in languages}
    ids = sorted({i for lang, i in cells if lang == languages[0]})
    if len(cells) != len(ids) * len(languages) or any((lang, i) not in cells for lang in languages for i in ids):
        raise ValueError("every problem must be scored once in every language")
    return np.asarray([[cells[(lang, i)] for lang in languages] for i in ids], np.float64)


def _effect(base: Sequence[ItemResult], other: Sequence[ItemResult], languages: Sequence[str],
            settings: DemoSettings, better: str = "helps", worse: str = "hurts") -> dict[str, Any]:
    """The effect of `other` against `base` on the same problems in `languages` (the non-base ones), problems as
    units (``routing.claims.clustered_effect``)."""
    return {"languages": list(languages), **claims.clustered_effect(
        outcome_table(base, languages), outcome_table(other, languages), n_boot=settings.n_boot,
        seed=settings.seed, alpha=settings.alpha, better=better, worse=worse)}


def pair_batches(tokenizer, spec: Mapping[str, Any], languages: Sequence[str], base: str, pairs: int, weight: float,
                 seed: int) -> Callable[[int], dict[str, Any]]:
    """``batch_at(step)`` for ``routing.finetune``: ``pairs`` base training sentences (rows [0, pairs)) and the same
    meanings in a language drawn per row from ``languages`` (rows [pairs, 2 pairs)), left-padded, plus the
    alignment weight. The sentences are the organism's parallel training data (never its test passages)."""
    corpus = build_from_spec(spec)
    train = {lang: {e.id: e.text for e in corpus.parallel_train[lang]} for lang in (base, *languages)}
    pool = [(lang, i) for lang in languages for i in train[lang] if i in train[base]]
    if len(pool) < pairs:
        raise ValueError(f"{len(pool)} parallel training pairs, fewer than {pairs} per batch")
    encoded = {key: tokenizer(text)["input_ids"] for key in {*pool, *((base, i) for _, i in pool)}
               for text in [train[key[0]][key[1]]]}
    width = max(map(len, encoded.values()))
    pad = tokenizer.pad_token_id

    def batch_at(step: int) -> dict[str, Any]:
        chosen = [pool[j] for j in np.random.default_rng([seed, step]).choice(len(pool), pairs, replace=False)]
        rows = [(encoded[(base, i)], None) for _, i in chosen] + [(encoded[key], None) for key in chosen]
        batch = pad_rows(rows, len(rows), width, pad)
        return {"input_ids": jnp.asarray(batch.input_ids), "attention_mask": jnp.asarray(batch.attention_mask),
                "alignment_weight": jnp.float32(weight)}

    return batch_at


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), *, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step (module docstring) into a folder built beside ``out`` and swapped in at the end; returns the
    summary."""
    out = Path(out)
    record = check_demo(out, settings)
    with atomic_folder(out) as build:
        summary = _run(build, settings, record, progress, log)
    log(f"report: {out}")
    return summary


def _run(build: Path, settings: DemoSettings, record: Mapping[str, Any], progress: bool,
         log: Callable[[str], None]) -> dict[str, Any]:
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now
        log(f"{name}: {timings[name]} s")

    folder, model = settings.folder, str(settings.folder)
    evals = settings.eval_settings()
    routing_config = analyze_routing.AnalysisConfig(
        model=model, data="organism", source_dir=folder, out_dir=build / "routing", chat=False,
        max_passages=settings.max_passages, batch_size=settings.batch_size, max_length=256, seed=settings.seed,
        window=settings.window, tfds_dir=settings.tfds_dir, progress=progress)
    analysis = analyze_routing.prepare(routing_config)
    corpora = analyze_routing.analyze_languages(analysis)  # computed and stored; execute reads them back
    base = analysis.languages[0]
    per_sequence = {lang: d.T for lang, d in sequence_divergences(corpora, base).items()}
    u_claim = claims.u_shape_claim(per_sequence, alpha=settings.alpha, n_boot=settings.n_boot, seed=settings.seed)
    curves = divergence_curves(corpora, base)
    window = middle_window(curves, settings.window, routing_config.window_fraction)
    analysis.config = routing_config = dataclasses.replace(routing_config, window=str(window))
    analyze_routing.execute(analysis)
    lap("routing analysis")

    corr_config = correlate.CorrelateConfig(**{
        **{f.name: getattr(routing_config, f.name) for f in dataclasses.fields(analyze_routing.RoutingConfig)},
        "out_dir": build / "correlation", "routing_dir": build / "routing", "window": str(window),
        "task": TASK, "eval": evals, "n_boot": settings.n_boot})
    prepared = correlate.prepare(corr_config)
    corr = correlate.execute(prepared)
    loaded = prepared.loaded
    baseline = [item for code in analysis.languages
                for item in ItemStore(build / "correlation" / TASK).load(code, prepared.task_settings)]
    r_claim = claims.correlation_claim(corr, alpha=settings.alpha)
    lap("correlation")

    expert_settings = ExpertSettings(task=TASK, window=window, tau=settings.tau, top_n=settings.top_n,
                                     num_samples=settings.expert_samples, seed=settings.seed,
                                     batch_size=settings.batch_size, max_length=256, max_passages=settings.max_passages)
    experts, _ = run_expert_search(model, expert_settings, build / "experts", source_dir=folder,
                                   tfds_dir=settings.tfds_dir, loaded=loaded, progress=progress)
    lap("task experts")

    steered: dict[str, list[ItemResult]] = {}
    for name, options in conditions(settings).items():
        config = steer_eval.SteerEvalConfig(
            model=model, task=TASK, experts=build / "experts" / "experts.json", out_dir=build / "steering" / name,
            languages=analysis.languages, eval=evals, source_dir=folder, tfds_dir=settings.tfds_dir,
            correlation=False, seed=settings.seed, n_boot=settings.n_boot, progress=progress, **options)
        steered[name] = steer_eval.execute(steer_eval.prepare(config, loaded), baseline=baseline)["steered"]
    primary = f"soft_{settings.primary_lam:g}"
    others = [lang for lang in analysis.languages if lang != base]
    effects = {name: _effect(baseline, results, others, settings) for name, results in steered.items()}
    per_layer = np.bincount([layer for layer, _ in experts.task_experts], minlength=loaded.config.num_moe_layers)
    if crowded := [int(layer) for layer in np.flatnonzero(per_layer >= loaded.config.top_k)]:
        effects["hard"]["note"] = (f"forces >= top_k ({loaded.config.top_k}) experts in MoE layer(s) {crowded}, "
                                   "where it replaces the router's choice entirely")
    versus = {control: _effect(steered[control], steered[primary], others, settings, "beats", "loses to")
              for control in ("outside_window", "random_experts")}
    shown = (effects[primary]["verdict"] == "helps"
             and all(v["verdict"] == "beats" for v in versus.values()))
    s_claim = {"claim": "soft steering of middle-layer task experts raises non-base accuracy, more than steering "
                        "outside the window or random experts",
               "test": f"non-base languages, problems as units (bootstrap 95% interval over problems, sign-flip "
                       f"randomisation p < {settings.alpha}): soft lambda {settings.primary_lam} (fixed in advance) "
                       "against the baseline, and against each control at the same lambda",
               "task_experts": len(experts.task_experts), "effect": effects[primary], "versus_controls": versus,
               "verdict": "shown" if shown else "not shown"}
    lap("steering")

    finetuned = _finetune(build / "finetune", settings, record, analysis, loaded, baseline, window, base, evals,
                          progress) if settings.finetune_steps else None
    lap("finetuning")

    accuracy = {lang: float(np.mean([i.correct for i in baseline if i.language == lang]))
                for lang in analysis.languages}
    summary = {"report": REPORT, "model": str(folder), "seed": settings.seed, "languages": list(analysis.languages),
               "baseline_accuracy": accuracy,
               "items_per_language": len(baseline) // len(analysis.languages), "window": list(window),
               "claims": {"u_shape": u_claim, "correlation": r_claim, "steering": s_claim},
               "steering": effects, "finetune": finetuned, "seconds": timings,
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()},
               "organism": {k: record.get(k) for k in ("training", "metrics")}}
    write_json(build / "summary.json", summary)
    with atomic_path(build / "summary.md") as temp:
        temp.write_text(summary_markdown(summary, baseline, steered), encoding="utf-8")
    return summary


def _finetune(out: Path, settings: DemoSettings, record: Mapping[str, Any], analysis, loaded, baseline, window: Window,
              base: str, evals: EvalSettings, progress: bool) -> dict[str, Any]:
    """Routing-aware and plain finetuning from the same start, each evaluated on every item and re-analysed."""
    out.mkdir(parents=True, exist_ok=True)
    others = [lang for lang in analysis.languages if lang != base]
    ft = FinetuneSettings(layers=tuple(window.layers), router_only=True, steps=settings.finetune_steps,
                          learning_rate=settings.finetune_learning_rate)
    data = load_task(TASK, analysis.languages, evals, source_dir=analysis.config.source_dir,
                     tfds_dir=settings.tfds_dir)
    stats_fn = statistics_fn(loaded.model, num_pairs=2)
    runs, results = {}, {}
    panels = {"before finetuning": divergence_curves(analyze_routing.analyze_languages(analysis), base)}
    for name, weight in (("routing_aware", settings.finetune_weight), ("plain", 0.0)):
        batch_at = pair_batches(loaded.tokenizer, record["data"], others, base, settings.finetune_pairs, weight,
                                settings.seed)
        params, history = finetune(loaded.model, loaded.params, batch_at, ft, progress=progress,
                                   description=f"finetune ({name})")
        results[name] = run_task(loaded.model, params, loaded.tokenizer, data, evals,
                                 edit=steering.empty(loaded), eos_ids=loaded.eos_ids)
        corpora = route_languages(loaded.model, params, analysis.batches, seed=settings.seed, stats_fn=stats_fn)
        panels[f"after {name.replace('_', '-')} finetuning"] = divergence_curves(corpora, base)
        runs[name] = {"alignment_weight": weight, "final_loss": history[-1]["loss"],
                      "window_divergence": {lang: window.mean(np.asarray(c)) for lang, c in
                                            panels[f"after {name.replace('_', '-')} finetuning"].items()},
                      "versus_baseline": _effect(baseline, results[name], others, settings)}
    aware = _effect(results["plain"], results["routing_aware"], others, settings, "beats", "loses to")
    write_json(out / "finetune.json", {"settings": dataclasses.asdict(ft), "runs": runs,
                                       "routing_aware_versus_plain": aware})
    write_csv(out / "finetune.csv", [{"run": name, **row} for name in results
                                     for row in paired_table(baseline, results[name], n_boot=settings.n_boot,
                                                             seed=settings.seed)])
    plot_divergence_curves(panels, window, out / "finetune_divergence.png", reference=base, measure=NORMALISED_JSD,
                           caption=f"{settings.folder.name}: divergence from {base} before and after "
                                   f"{settings.finetune_steps} finetuning steps (router only)")
    return {"runs": runs, "routing_aware_versus_plain": aware,
            "claim": "routing-aware finetuning raises non-base accuracy more than the same finetuning without the "
                     "alignment loss", "verdict": "shown" if aware["verdict"] == "beats" else "not shown"}


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _f(value: float | None) -> str:
    """Two decimals; "n/a" for a statistic that is undefined (e.g. r of a constant accuracy)."""
    return "n/a" if value is None else f"{value:.2f}"


def summary_markdown(summary: Mapping[str, Any], baseline: Sequence[ItemResult],
                     steered: Mapping[str, Sequence[ItemResult]]) -> str:
    """The verdicts, then accuracy per language and condition (in %)."""
    u, r, s = (summary["claims"][k] for k in ("u_shape", "correlation", "steering"))
    e = s["effect"]
    trained = (summary.get("organism") or {}).get("training") or {}
    lines = [f"# Model organism {Path(summary['model']).name} (training seed {trained.get('seed', '?')}); demo seed "
             f"{summary['seed']}", "",
             f"{len(summary['languages'])} languages, {summary['items_per_language']} task items each; middle window "
             f"MoE layers {summary['window'][0]}-{summary['window'][1]}.", "",
             "| claim | verdict | evidence |", "|---|---|---|",
             f"| 1. U-shaped divergence | {u['verdict']} | {u['u_shaped']} of {u['languages']} languages U-shaped "
             f"(bootstrap, Holm p < 0.05) |",
             f"| 2. divergence vs accuracy | {r['verdict']} | Pearson r = {_f(r['pearson_r'])} "
             f"[{_f(r['pearson_ci'][0])}, {_f(r['pearson_ci'][1])}], p = {_p(r['pearson_p'])}, n = {r['n']} |",
             f"| 3. steering helps | {s['verdict']} | soft: {100 * e['difference']:+.1f} points "
             f"[{100 * e['difference_ci_low']:+.1f}, {100 * e['difference_ci_high']:+.1f}], p = {_p(e['p'])}; "
             + "; ".join(f"vs {c}: {100 * v['difference']:+.1f} (p = {_p(v['p'])})"
                         for c, v in s["versus_controls"].items()) + " |"]
    if summary["finetune"]:
        a = summary["finetune"]["routing_aware_versus_plain"]
        lines.append(f"| routing-aware finetuning | {summary['finetune']['verdict']} | vs plain: "
                     f"{100 * a['difference']:+.1f} points [{100 * a['difference_ci_low']:+.1f}, "
                     f"{100 * a['difference_ci_high']:+.1f}], p = {_p(a['p'])} |")
    names = ["baseline", *steered]
    lines += ["", "Accuracy (%) per language:", "", "| language | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    runs = {"baseline": baseline, **steered}
    for lang in summary["languages"]:
        cells = []
        for name in names:
            items = [i for i in runs[name] if i.language == lang]
            cells.append(f"{100 * sum(i.correct for i in items) / len(items):.1f}")
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds: " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items())]
    return "\n".join(lines) + "\n"


def seeds_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the claims' verdicts and evidence, one row per demo report (e.g. one per training
    seed): the organism's training seed, base and mean non-base baseline accuracy, then each claim."""
    lines = ["| organism seed | base acc. | non-base acc. (mean) | 1. U shape | 2. divergence vs accuracy | "
             "3. steering (soft, non-base) | routing-aware finetuning |", "|---" * 7 + "|"]
    for s in summaries:
        u, r, st = (s["claims"][k] for k in ("u_shape", "correlation", "steering"))
        accuracy = s["baseline_accuracy"]
        others = [v for k, v in accuracy.items() if k != s["languages"][0]]
        e = st["effect"]
        ft = s["finetune"]
        finetune = "not run" if ft is None else (
            f"{ft['verdict']} ({ft['routing_aware_versus_plain']['verdict']}): "
            f"{_points(ft['routing_aware_versus_plain'])}")
        lines.append(
            f"| {((s.get('organism') or {}).get('training') or {}).get('seed', '?')} | "
            f"{100 * accuracy[s['languages'][0]]:.1f}% | "
            f"{100 * sum(others) / len(others):.1f}% | {u['verdict']}: {u['u_shaped']}/{u['languages']} languages | "
            f"{r['verdict']}: r = {_f(r['pearson_r'])} [{_f(r['pearson_ci'][0])}, {_f(r['pearson_ci'][1])}], "
            f"p = {_p(r['pearson_p'])} | {st['verdict']} ({e['verdict']}): {_points(e)} | {finetune} |")
    return "\n".join(lines) + "\n"


def _points(effect: Mapping[str, Any]) -> str:
    return (f"{100 * effect['difference']:+.1f} pts [{100 * effect['difference_ci_low']:+.1f}, "
            f"{100 * effect['difference_ci_high']:+.1f}], p = {_p(effect['p'])}")
