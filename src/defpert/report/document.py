"""The study's report: Markdown, self-contained HTML (figures embedded) and CSV.

Numbers from the original study's weak attack and from the strong and adaptive attacks
are labelled as such, and a defense whose weak-attack gain disappears under the strong
or adaptive attack is flagged.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from defpert.results import DefenseResult, Measured, SweepRow
from defpert.runtime.rundir import write_bytes_atomic
from defpert.wording import aligned
from defpert.wording import percent as _pct

ResultLike = DefenseResult | Mapping[str, Any]


def as_result(result: ResultLike) -> DefenseResult:
    """The typed record of a result (``dp --json`` objects are read as such)."""
    return result if isinstance(result, DefenseResult) else DefenseResult.from_json(result)


def model_kind(result: DefenseResult) -> str:
    """Which of the study's models a result is of (``reproduce --models``)."""
    return str(result.record.get("model", "standard"))


# The numbers to trust first, so that a phone's narrow screen shows them without scrolling:
# (the CSV's column, the table's header, the number).
COLUMNS: list[tuple[str, str, Callable[[DefenseResult], Measured | None]]] = [
    ("bare_strong", "strong attack, original", lambda r: r.bare.strong),
    ("defended_strong", "strong attack, defensive", lambda r: r.defended.strong),
    ("adaptive", "adaptive attack through defense", lambda r: r.adaptive),
    ("bare_strong_on_adaptive_examples", "strong attack, bare model, adaptive n",
     lambda r: r.bare_strong_on_adaptive_examples),
    ("bare_weak", "weak attack, original", lambda r: r.bare.weak),
    ("defended_weak", "weak attack, defensive", lambda r: r.defended.weak),
    ("weak_points_through_defense", "defense on adversarial inputs",
     lambda r: r.weak_points_through_defense),
    ("bare_clean", "clean, original", lambda r: r.bare.clean),
    ("defended_clean", "clean, defensive", lambda r: r.defended.clean),
    ("undo_then_attack", "undo-then-attack, defensive", lambda r: r.undo_then_attack),
]  # fmt: skip


def _value(m: Measured | None) -> float | None:
    return m.accuracy if m is not None else None


def flags(result: ResultLike) -> list[str]:
    """Warnings for a defense whose weak-attack gain does not survive stronger attacks."""
    r = as_result(result)
    out = []
    bare_weak = _value(r.bare.weak) or 0.0
    defended = r.defended.weak or r.weak_points_through_defense  # a Measured, or None
    weak_gain = (defended.accuracy if defended is not None else bare_weak) - bare_weak
    if r.defended.strong is not None and r.bare.strong is not None:
        strong_gain = r.defended.strong.accuracy - r.bare.strong.accuracy
        if weak_gain > 0.02 and strong_gain < 0.5 * weak_gain:
            out.append(
                f"{r.defense}: the weak-attack gain ({_pp(weak_gain)}) shrinks to "
                f"{_pp(strong_gain)} under the strong attack"
            )
    if r.adaptive is not None and r.bare_strong_on_adaptive_examples is not None:
        adaptive, bare = r.adaptive.accuracy, r.bare_strong_on_adaptive_examples.accuracy
        if adaptive - bare < 0.5 * max(weak_gain, 0.0) or adaptive < 0.05:
            out.append(
                f"{r.defense}: under the adaptive attack through the defense, accuracy is "
                f"{adaptive:.1%} (bare model under the strong attack, same {r.adaptive.n} "
                f"examples: {bare:.1%})"
            )
    return out


def rows_for_csv(results: Sequence[ResultLike]) -> list[dict[str, Any]]:
    rows = []
    for r in map(as_result, results):
        t = r.threat
        row: dict[str, Any] = {
            "dataset": r.dataset, "model": model_kind(r), "norm": t.norm, "eps": t.eps,
            "steps": t.steps, "step_size": t.step_size, "defense": r.defense, "kind": r.kind,
            "n": r.n, "strong_n": r.bare.strong.n if r.bare.strong else "",
            "adaptive_n": r.adaptive.n if r.adaptive else "",
        }  # fmt: skip
        for key, _, number in COLUMNS:
            row[key] = "" if number(r) is None else number(r).accuracy  # type: ignore[union-attr]
        rows.append(row)
    return rows


def write_csv(path: Path, results: Sequence[ResultLike]) -> None:
    rows = rows_for_csv(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["dataset"])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buf.getvalue().encode())


def _pp(v: float) -> str:
    """A difference of two accuracies, in percentage points."""
    return f"{100 * v:+.1f} pp"


def _threat_title(r: DefenseResult, with_model: bool = True) -> str:
    kind = model_kind(r)
    model = f" — {kind} model" if with_model and kind != "standard" else ""
    return r.threat.title() + model


# fmt: off
def _defense_steps(budget: Mapping[str, Any]) -> int:
    """Gradient steps a defensive perturbation spends per image (robustify: its inner attacks too)."""
    return int(budget["steps"]) * int(budget.get("passes_per_step", 1))


def headline(
    results_by_threat: Mapping[str, Sequence[ResultLike]],
    models: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Markdown lines: per threat model, every (model, defensive perturbation) ranked.

    Every ranking compares numbers on the same examples: proactive defenses and the bare
    models by the strong attack (first ``strong n`` examples); reactive defenses, which are
    part of the model at test time, by the adaptive attack through them (first
    ``adaptive n`` examples), beside each bare model's strong accuracy on those examples.
    """
    strong: dict[str, list[tuple[float, str, str, float, float, int, int]]] = {}
    reactive: dict[str, list[tuple[float, str, str, float, float | None, int, int]]] = {}
    for results in results_by_threat.values():
        for r in map(as_result, results):
            kind = model_kind(r)
            if r.bare.strong is None:
                continue
            title = _threat_title(r, with_model=False)
            rows = strong.setdefault(title, [])
            weak = _value(r.bare.weak)
            if not any(row[1] == kind and row[2] == "none" for row in rows):
                rows.append((r.bare.strong.accuracy, kind, "none", r.bare.clean.accuracy,
                             weak if weak is not None else float("nan"), r.bare.strong.n, 0))
            steps = _defense_steps(r.defense_budget)
            if r.reactive:
                if r.adaptive is not None:
                    reactive.setdefault(title, []).append(
                        (r.adaptive.accuracy, kind, r.defense, r.defended.clean.accuracy,
                         _value(r.bare_strong_on_adaptive_examples), r.adaptive.n, steps))
            elif r.defended.strong is not None and r.defended.weak is not None:
                rows.append((r.defended.strong.accuracy, kind, r.defense,
                             r.defended.clean.accuracy, r.defended.weak.accuracy,
                             r.defended.strong.n, steps))
    lines = []
    for title, rows in strong.items():
        rows.sort(key=lambda row: -row[0])
        best = rows[0]
        lines += [f"## Headline: {title}", "",
                  f"Highest strong-attack accuracy: **{best[0]:.1%}** (n={best[5]}), {best[1]} model "
                  f"with defensive perturbation {best[2]}. Cost: the model's training time, and the "
                  "gradient steps the defensive perturbation spends on each image.", "",
                  "| model | defensive perturbation | strong attack | n | weak attack | clean | training seconds | steps per image |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for acc, kind, defense, clean, weak, n, steps in rows:
            lines.append(f"| {kind} | {defense} | {acc:.1%} | {n} | {weak:.1%} | {clean:.1%} | {_cost(models, kind)} | {steps} |")
        lines.append("")
        if title in reactive:
            lines += ["Reactive defenses, ranked by the adaptive attack through them, beside the "
                      "bare model's strong accuracy on the same examples:", "",
                      "| model | reactive defense | adaptive attack | bare model, strong attack | n | clean | steps per image |",
                      "|---|---|---:|---:|---:|---:|---:|"]
            for acc, kind, defense, clean, bare, n, steps in sorted(reactive[title], key=lambda row: -row[0]):
                lines.append(f"| {kind} | {defense} | {acc:.1%} | {_pct(bare)} | {n} | {clean:.1%} | {steps} |")
            lines.append("")
    return lines


def _cost(models: Mapping[str, Mapping[str, Any]], kind: str) -> str:
    secs = models.get(kind, {}).get("training_seconds")
    return f"{secs:.0f}" if isinstance(secs, (int, float)) else "–"
# fmt: on


def how_to_read(
    results_by_threat: Mapping[str, Sequence[ResultLike]], strong_steps: int = 100
) -> list[str]:
    """The paragraph that says what each attack is and from where its budget is measured."""
    suite: Mapping[str, Any] = {}
    adaptive: Mapping[str, Any] = {}
    for results in results_by_threat.values():
        for r in map(as_result, results):
            suite = suite or r.strong_suite
            adaptive = adaptive or r.adaptive_config
    attacks = ", ".join(suite.get("attacks", [])) or f"PGD-{strong_steps} and APGD"
    tier = suite.get("tier", "standard")
    queries = adaptive.get("square_queries")
    return [
        "**How to read the tables.** *Weak attack* is the original study's PGD (its exact",
        f"settings). *Strong attack* (tier `{tier}`) is the worst case per example over {attacks}",
        "(each attack only on the examples still unbroken, as AutoAttack does) on the first",
        "`strong n` examples. *Adaptive attack* attacks through a reactive defense: the worst",
        "case per example over the clean input, the bare model's weak and strong points passed",
        f"through the defense, BPDA with PGD-{strong_steps} (CW margin) and APGD-CE/DLR with restarts,",
        "the unrolled defense (straight-through sign at L-inf)"
        + (f" and Square with {queries} queries through the defense" if queries else "")
        + ",",
        "on the first `adaptive n` examples, beside the bare model's strong accuracy on the",
        "same examples. On a proactively defended point the strong attack also starts from",
        "the bare model's weak and strong points, projected into its threat model; on `robustify`",
        "points it also includes Moon et al.'s",
        "undo-then-attack (the robustification reversed within the defender's budget, then",
        "PGD from there inside the same threat model). *Threat model:* an attack on a proactively defended point has its",
        "budget measured from the defended point (man-in-the-middle, Moon et al. 2022), so it",
        "can end up to eps_def + eps from the natural image. Trust the strong and adaptive numbers.",
    ]


def conclusion(results_by_threat: Mapping[str, Sequence[ResultLike]]) -> list[str]:
    """The report's first lines: per threat model, the best defense under the attacks that
    count (the strong suite for a proactive defense, the adaptive attack for a reactive one)
    beside the bare model on the same examples, with 95 % intervals, and whether the gain
    is larger than their uncertainty."""
    lines = ["## Conclusion", ""]
    for results in results_by_threat.values():
        typed = [as_result(r) for r in results]
        best: DefenseResult | None = None
        for r in typed:
            value, bare = r.decisive, r.bare_on_decisive_examples
            if value is None or bare is None or not value.n:
                continue
            if best is None or _gain(r) > _gain(best):
                best = r
        if best is None:
            continue
        value, bare = best.decisive, best.bare_on_decisive_examples
        assert value is not None and bare is not None
        gain, paired = _gain(best), best.paired
        if paired is not None:  # the same examples: judged by the ones on which they differ
            low, high = paired["interval95"]
            verdict = ("more than its paired uncertainty" if low > 0 else
                       "within its paired uncertainty" if gain > 0 else "no gain")  # fmt: skip
            judged = f"paired 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}]: {verdict}"
        else:  # a result saved without its per-example verdicts: the two intervals
            judged = ("more than the uncertainty" if value.interval95[0] > bare.interval95[1] else
                      "within the uncertainty" if gain > 0 else "no gain")  # fmt: skip
        first = typed[0]
        budget = ("the defended point" if first.threat.budget_from == "defended"
                  else "the natural image and the defended point")  # fmt: skip
        lines.append(
            f"- **{_threat_title(first)}, budget from {budget}** (the bare model's from the "
            f"natural image): the best defense under the strong and adaptive "
            f"attacks is `{best.defense}`, {value} against the bare model's "
            f"{bare} on the same {value.n} examples ({gain * 100:+.1f} points, {judged})."
        )
    return lines + [""] if len(lines) > 2 else []


def _gain(r: DefenseResult) -> float:
    """The decisive number's gain over the bare model on the same examples."""
    value, bare = r.decisive, r.bare_on_decisive_examples
    return value.accuracy - bare.accuracy if value is not None and bare is not None else 0.0


def _passes(cost: Mapping[str, Any] | None) -> str:
    """``forward / backward`` passes per example, or a dash where the run did not count them."""
    if not cost:
        return "–"
    return f"{cost['forward']:,.0f} / {cost['backward']:,.0f}"


def cost_lines(results: Sequence[ResultLike]) -> list[str]:
    """What each piece cost, in passes of the classifier per example (forward / backward):
    the machine-independent cost (a dash: computed by an earlier run, before it was counted)."""
    typed = [as_result(r) for r in results]
    if not any(r.passes for r in typed):
        return []
    shared = typed[0].passes
    lines = ["", f"Cost in passes of the classifier per example (forward / backward): weak attack "
             f"{_passes(shared.get('adversarial'))}, strong suite on the bare model "
             f"{_passes(shared.get('strong-original'))}.", "",
             "| defense | defending | weak attack on the defended points | strong (proactive) or adaptive (reactive) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for r in typed:
        m, cost = r.defense, r.passes
        attacked = cost.get(f"{m}/defensive-attacked") or cost.get(f"{m}/defended-adversarial")
        final = cost.get(f"strong-{m}") or cost.get(f"adaptive-{m}")
        lines.append(f"| {m} | {_passes(cost.get(f'{m}/defensive'))} | {_passes(attacked)} | "
                     f"{_passes(final)} |")  # fmt: skip
    return lines


def markdown(
    title: str,
    summary: Sequence[str],
    results_by_threat: Mapping[str, Sequence[ResultLike]],
    figures: Mapping[str, str],
    sweep_rows: Sequence[SweepRow | Mapping[str, Any]] = (),
    strong_steps: int = 100,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The report as Markdown; ``figures`` maps a caption to a path relative to the report.

    With several ``models`` (their training kind and seconds), a headline table first
    answers, per threat model: which model and defensive perturbation give the highest
    strong-attack accuracy, at what training cost.
    """
    typed = {key: [as_result(r) for r in results] for key, results in results_by_threat.items()}
    lines = [f"# {title}", "", *conclusion(typed)]
    if models and len(models) > 1:
        lines += [*headline(typed, models), ""]
    for threat, results in typed.items():
        lines += _rq1_section(threat, results, figures)
    lines += ["## How to read this report", "", *how_to_read(typed, strong_steps), ""]
    lines += [f"- {s}" for s in summary]
    if summary:
        lines.append("")
    lines += _sweep_section([r if isinstance(r, SweepRow) else SweepRow.from_json(r)
                             for r in sweep_rows])  # fmt: skip
    for caption, path in figures.items():
        if caption.split(":")[0] not in typed:  # not a per-threat figure
            lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    return "\n".join(lines) + "\n"


def _rq1_section(
    threat: str, results: Sequence[DefenseResult], figures: Mapping[str, str]
) -> list[str]:
    """One threat model's table (every number by defense), costs, flags and figures."""
    first = results[0]
    adaptive_n = next((r.adaptive.n for r in results if r.adaptive is not None), "–")
    budget = ("the defended point (man-in-the-middle)" if first.threat.budget_from == "defended"
              else "the natural image and the defended point")  # fmt: skip
    strong_n = first.bare.strong.n if first.bare.strong is not None else "–"
    lines = [f"## RQ1: {_threat_title(first)}", "",
             f"n = {first.n} test examples; strong n = {strong_n}; adaptive n = {adaptive_n}. "
             f"An attack on a defended point measures its eps from {budget}.", "",
             "| defense | kind | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for r in results:
        cells = [_pct(_value(number(r))) for _, _, number in COLUMNS]
        lines.append(f"| {r.defense} | {r.kind} | " + " | ".join(cells) + " |")
    lines += cost_lines(results)
    warn = [f for r in results for f in flags(r)]
    if warn:
        lines += ["", "**Flagged:**", ""] + [f"- ⚠ {w}" for w in warn]
    lines.append("")
    for caption, path in figures.items():
        if caption.startswith(threat + ":"):
            lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    return lines


def _sweep_section(rows: Sequence[SweepRow]) -> list[str]:
    """Accuracy versus eps: the weak and strong attacks on the same examples."""
    if not rows:
        return []
    first = rows[0]
    strong_n = first.bare.strong.n if first.bare.strong is not None else "–"
    lines = ["## Accuracy versus eps", "",
             f"Weak and strong attacks on the same {strong_n} examples "
             f"(the weak attack on all {first.bare.clean.n}: last columns).", "",
             "| eps | step | original weak | original strong | defensive weak | defensive strong | original weak, all | defensive weak, all |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in rows:
        b, d = row.bare, row.defended
        cells = [b.weak_on_strong_examples, b.strong, d.weak_on_strong_examples, d.strong,
                 b.weak, d.weak]  # fmt: skip
        lines.append(f"| {row.eps} | {row.step_size:.4g} | "
                     + " | ".join(_pct(_value(c)) for c in cells) + " |")  # fmt: skip
    return [*lines, ""]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:12px;line-height:1.45;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;min-width:600px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:right}th{background:#f3f3f3}
td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;height:auto}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}.flag{color:#a40;font-weight:600}
"""


def html_report(markdown_text: str, figure_files: Mapping[str, Path]) -> str:
    """Self-contained HTML from the report's Markdown: images embedded as data URIs."""
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>defpert report</title><style>{_CSS}</style></head><body>"]  # fmt: skip
    lines = markdown_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("| "):
            table = []
            while i < len(lines) and lines[i].startswith("|"):
                table.append(lines[i])
                i += 1
            out.append(_html_table(table))
            continue
        if line.startswith("![") and "](" in line:
            caption = line[2 : line.index("](")]
            data = base64.b64encode(figure_files[caption].read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
            i += 2  # skip the italic caption line
            continue
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- ⚠"):
            out.append(f"<p class='flag'>{html.escape(line[2:])}</p>")
        elif line.startswith("- "):
            items = [line]
            while (
                i + 1 < len(lines)
                and lines[i + 1].startswith("- ")
                and not lines[i + 1].startswith("- ⚠")
            ):
                i += 1
                items.append(lines[i])
            out.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in items) + "</ul>")
        elif line.strip():
            para = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and lines[i + 1][0] not in "#|-!*":
                i += 1
                para.append(lines[i])
            out.append(f"<p>{_inline(' '.join(para))}</p>")
        i += 1
    out.append("</body></html>")
    return "\n".join(out)


def _inline(text: str) -> str:
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    t = re.sub(r"\*(.+?)\*", r"<em>\1</em>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _html_table(rows: list[str]) -> str:
    cells = [
        [c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")
    ]
    head, body = cells[0], cells[1:]
    parts = ["<div class='scroll'><table><thead><tr>"]
    parts += [f"<th>{html.escape(h)}</th>" for h in head]
    parts.append("</tr></thead><tbody>")
    for row in body:
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def terminal_summary(results_by_threat: Mapping[str, Sequence[ResultLike]]) -> str:
    """The study's numbers as an aligned plain-text table per threat model (``reproduce``).

    Proactive rows: accuracy of the defended points, attacked and clean; reactive rows: the
    adaptive attack through the defense, and the defense applied to the weak attack's points.
    The columns come in the report's order, the numbers to trust first (strong, adaptive,
    weak, clean); the bare model's row first; every column names its n, and every accuracy
    carries its 95 % Wilson interval.
    """
    blocks = []
    for key, raw in results_by_threat.items():
        if not raw:
            continue
        results = [as_result(r) for r in raw]
        first = results[0]
        t = first.threat
        strong_n = first.bare.strong.n if first.bare.strong is not None else None
        adaptive_n = next((r.adaptive.n for r in results if r.adaptive is not None), None)
        head = ["defense", "kind", f"strong (n={strong_n})" if strong_n else "strong",
                f"adaptive (n={adaptive_n})" if adaptive_n else "adaptive",
                f"weak (n={first.n})", f"clean (n={first.n})"]  # fmt: skip

        def cell(value: Measured | None) -> str:
            return "–" if value is None else str(value)

        rows = [["none", "bare model", cell(first.bare.strong), "", cell(first.bare.weak),
                 cell(first.bare.clean)]]  # fmt: skip
        for r in results:
            if r.reactive:
                rows.append([r.defense, "reactive", "", cell(r.adaptive),
                             cell(r.weak_points_through_defense), cell(r.defended.clean)])  # fmt: skip
            else:
                rows.append([r.defense, "proactive", cell(r.defended.strong), "",
                             cell(r.defended.weak), cell(r.defended.clean)])  # fmt: skip
        title = f"{key}: {t.norm} eps {t.eps:g}, budget from the {t.budget_from} point"
        blocks.append(title + "\n" + "\n".join("  " + line for line in
                                                aligned([head, *rows], left=2).splitlines()))  # fmt: skip
    return "\n\n".join(blocks)
