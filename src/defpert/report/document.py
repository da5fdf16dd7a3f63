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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defpert.wording import aligned, with_interval
from defpert.wording import percent as _pct

# The numbers to trust first, so that a phone's narrow screen shows them without scrolling.
COLUMNS = [
    ("original_attacked_strong", "strong attack, original"),
    ("defensive_attacked_strong", "strong attack, defensive"),
    ("adaptive", "adaptive attack through defense"),
    ("bare_strong_adaptive_examples", "strong attack, bare model, adaptive n"),
    ("original_attacked", "weak attack, original"),
    ("defensive_attacked", "weak attack, defensive"),
    ("defended_adversarial", "defense on adversarial inputs"),
    ("original", "clean, original"),
    ("defensive", "clean, defensive"),
    ("defensive_undo_attacked", "undo-then-attack, defensive"),
]


def flags(result: Mapping[str, Any]) -> list[str]:
    """Warnings for a defense whose weak-attack gain does not survive stronger attacks."""
    a = result["accuracy"]
    out = []
    weak_defended = a.get(
        "defensive_attacked", a.get("defended_adversarial", a["original_attacked"])
    )
    weak_gain = weak_defended - a["original_attacked"]
    if "defensive_attacked_strong" in a:
        strong_gain = a["defensive_attacked_strong"] - a["original_attacked_strong"]
        if weak_gain > 0.02 and strong_gain < 0.5 * weak_gain:
            out.append(
                f"{result['defense']}: the weak-attack gain ({_pp(weak_gain)}) shrinks to "
                f"{_pp(strong_gain)} under the strong attack"
            )
    if "adaptive" in a and "bare_strong_adaptive_examples" in a:
        bare = a["bare_strong_adaptive_examples"]  # the same examples as the adaptive attack
        n = result.get("adaptive", {}).get("n", "")
        if a["adaptive"] - bare < 0.5 * max(weak_gain, 0.0) or a["adaptive"] < 0.05:
            out.append(
                f"{result['defense']}: under the adaptive attack through the defense, accuracy is "
                f"{a['adaptive']:.1%} (bare model under the strong attack, same {n} examples: {bare:.1%})"
            )
    return out


def rows_for_csv(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        t = r["threat"]
        row: dict[str, Any] = {
            "dataset": r["dataset"], "model": r.get("model", "standard"), "norm": t["norm"], "eps": t["eps"], "steps": t["steps"],
            "step_size": t["step_size"], "defense": r["defense"], "kind": r["defense_kind"],
            "n": r["n"], "strong_n": r.get("strong", {}).get("n", ""),
            "adaptive_n": r.get("adaptive", {}).get("n", ""),
        }  # fmt: skip
        for key, _ in COLUMNS:
            row[key] = r["accuracy"].get(key, "")
        rows.append(row)
    return rows


def write_csv(path: Path, results: Sequence[Mapping[str, Any]]) -> None:
    rows = rows_for_csv(results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["dataset"])
    writer.writeheader()
    writer.writerows(rows)
    from defpert.runtime.rundir import write_bytes_atomic

    write_bytes_atomic(path, buf.getvalue().encode())


def _pp(v: float) -> str:
    """A difference of two accuracies, in percentage points."""
    return f"{100 * v:+.1f} pp"


def _threat_title(r: Mapping[str, Any]) -> str:
    t = r["threat"]
    model = f" — {r['model']} model" if r.get("model", "standard") != "standard" else ""
    return f"{t['norm'].upper().replace('LINF', 'L-inf')} PGD, eps={t['eps']}, {t['steps']} steps of {t['step_size']}{model}"


# fmt: off
def _defense_steps(budget: Mapping[str, Any]) -> int:
    """Gradient steps a defensive perturbation spends per image (robustify: its inner attacks too)."""
    return int(budget["steps"]) * int(budget.get("passes_per_step", 1))


def headline(
    results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]],
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
        for r in results:
            a, kind = r["accuracy"], r.get("model", "standard")
            if "original_attacked_strong" not in a:
                continue
            title = _threat_title({**r, "model": "standard"})
            rows = strong.setdefault(title, [])
            n_strong = r.get("strong", {}).get("n", r["n"])
            if not any(row[1] == kind and row[2] == "none" for row in rows):
                rows.append((a["original_attacked_strong"], kind, "none", a["original"],
                             a["original_attacked"], n_strong, 0))
            steps = _defense_steps(r["defense_budget"])
            if r["defense_kind"] == "reactive":
                if "adaptive" in a:
                    reactive.setdefault(title, []).append(
                        (a["adaptive"], kind, r["defense"], a["defensive"],
                         a.get("bare_strong_adaptive_examples"),
                         r["adaptive"]["n"], steps))
            else:
                rows.append((a["defensive_attacked_strong"], kind, r["defense"], a["defensive"],
                             a["defensive_attacked"], n_strong, steps))
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
    results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]], strong_steps: int = 100
) -> list[str]:
    """The paragraph that says what each attack is and from where its budget is measured."""
    suite: Mapping[str, Any] = {}
    adaptive: Mapping[str, Any] = {}
    for results in results_by_threat.values():
        for r in results:
            suite = suite or r.get("strong", {}).get("suite", {})
            adaptive = adaptive or r.get("adaptive", {}).get("config", {})
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


def conclusion(results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """The report's first lines: per threat model, the best defense under the attacks that
    count (the strong suite for a proactive defense, the adaptive attack for a reactive one)
    beside the bare model on the same examples, with 95 % intervals, and whether the gain
    is larger than their uncertainty."""
    from defpert.wording import wilson, with_interval

    lines = ["## Conclusion", ""]
    for results in results_by_threat.values():
        best: tuple[float, str, float, float, int, Mapping[str, Any] | None] | None = None
        for r in results:
            a = r["accuracy"]
            if r["defense_kind"] == "reactive":
                value, bare = a.get("adaptive"), a.get("bare_strong_adaptive_examples")
                attacked = r.get("adaptive", {})
            else:
                value, bare = a.get("defensive_attacked_strong"), a.get("original_attacked_strong")
                attacked = r.get("strong", {})
            n = attacked.get("n", 0)
            if value is None or bare is None or not n:
                continue
            if best is None or value - bare > best[3]:
                best = (value, r["defense"], bare, value - bare, n, attacked.get("paired"))
        if best is None:
            continue
        value, name, bare, gain, n, paired = best
        if paired is not None:  # the same examples: judged by the ones on which they differ
            low, high = paired["interval95"]
            verdict = ("more than its paired uncertainty" if low > 0 else
                       "within its paired uncertainty" if gain > 0 else "no gain")  # fmt: skip
            judged = f"paired 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}]: {verdict}"
        else:  # a result saved without its per-example verdicts: the two intervals
            wilson_low, _ = wilson(round(value * n), n)
            _, bare_high = wilson(round(bare * n), n)
            judged = ("more than the uncertainty" if wilson_low > bare_high else
                      "within the uncertainty" if gain > 0 else "no gain")  # fmt: skip
        budget = ("the defended point" if results[0]["threat"].get("budget_from", "defended") == "defended"
                  else "the natural image and the defended point")  # fmt: skip
        lines.append(
            f"- **{_threat_title(results[0])}, budget from {budget}** (the bare model's from the "
            f"natural image): the best defense under the strong and adaptive "
            f"attacks is `{name}`, {with_interval(value, n)} against the bare model's "
            f"{with_interval(bare, n)} on the same {n} examples ({gain * 100:+.1f} points, {judged})."
        )
    return lines + [""] if len(lines) > 2 else []


def _passes(cost: Mapping[str, Any] | None) -> str:
    """``forward / backward`` passes per example, or a dash where the run did not count them."""
    if not cost:
        return "–"
    return f"{cost['forward']:,.0f} / {cost['backward']:,.0f}"


def cost_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """What each piece cost, in passes of the classifier per example (forward / backward):
    the machine-independent cost (a dash: computed by an earlier run, before it was counted)."""
    if not any(r.get("passes") for r in results):
        return []
    shared = results[0].get("passes", {})
    lines = ["", f"Cost in passes of the classifier per example (forward / backward): weak attack "
             f"{_passes(shared.get('adversarial'))}, strong suite on the bare model "
             f"{_passes(shared.get('strong-original'))}.", "",
             "| defense | defending | weak attack on the defended points | strong (proactive) or adaptive (reactive) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for r in results:
        m, cost = r["defense"], r.get("passes", {})
        attacked = cost.get(f"{m}/defensive-attacked") or cost.get(f"{m}/defended-adversarial")
        final = cost.get(f"strong-{m}") or cost.get(f"adaptive-{m}")
        lines.append(f"| {m} | {_passes(cost.get(f'{m}/defensive'))} | {_passes(attacked)} | "
                     f"{_passes(final)} |")  # fmt: skip
    return lines


def markdown(
    title: str,
    summary: Sequence[str],
    results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]],
    figures: Mapping[str, str],
    sweep_rows: Sequence[Mapping[str, Any]] = (),
    strong_steps: int = 100,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The report as Markdown; ``figures`` maps a caption to a path relative to the report.

    With several ``models`` (their training kind and seconds), a headline table first
    answers, per threat model: which model and defensive perturbation give the highest
    strong-attack accuracy, at what training cost.
    """
    lines = [f"# {title}", "", *conclusion(results_by_threat)]
    if models and len(models) > 1:
        lines += [*headline(results_by_threat, models), ""]
    for threat, results in results_by_threat.items():
        first = results[0]
        lines += [f"## RQ1: {_threat_title(first)}", ""]
        adaptive_n = next(
            (r["adaptive"]["n"] for r in results if r.get("adaptive", {}).get("n")), "–"
        )
        t = first["threat"]
        budget = ("the defended point (man-in-the-middle)" if t.get("budget_from", "defended") == "defended"
                  else "the natural image and the defended point")  # fmt: skip
        lines.append(
            f"n = {first['n']} test examples; strong n = {first.get('strong', {}).get('n', '–')}; "
            f"adaptive n = {adaptive_n}. An attack on a defended point measures its eps from {budget}."
        )
        lines.append("")
        lines.append("| defense | kind | " + " | ".join(h for _, h in COLUMNS) + " |")
        lines.append("|---|---|" + "---:|" * len(COLUMNS))
        for r in results:
            cells = [_pct(r["accuracy"].get(k)) for k, _ in COLUMNS]
            lines.append(f"| {r['defense']} | {r['defense_kind']} | " + " | ".join(cells) + " |")
        lines += cost_lines(results)
        warn = [f for r in results for f in flags(r)]
        if warn:
            lines += ["", "**Flagged:**", ""] + [f"- ⚠ {w}" for w in warn]
        lines.append("")
        for caption, path in figures.items():
            if caption.startswith(threat + ":"):
                lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    lines += ["## How to read this report", "", *how_to_read(results_by_threat, strong_steps), ""]
    lines += [f"- {s}" for s in summary]
    if summary:
        lines.append("")
    if sweep_rows:
        first_row = sweep_rows[0]
        lines += ["## Accuracy versus eps", "",
                  f"Weak and strong attacks on the same {first_row.get('strong_n', '–')} examples "
                  f"(the weak attack on all {first_row.get('n', '–')}: last columns).", "",
                  "| eps | step | original weak | original strong | defensive weak | defensive strong | original weak, all | defensive weak, all |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in sweep_rows:
            lines.append(
                f"| {row['eps']} | {row['step_size']:.4g} | {_pct(row.get('original_attacked_strong_n'))} | "
                f"{_pct(row.get('original_attacked_strong'))} | {_pct(row.get('defensive_attacked_strong_n'))} | "
                f"{_pct(row.get('defensive_attacked_strong'))} | {_pct(row.get('original_attacked'))} | "
                f"{_pct(row.get('defensive_attacked'))} |"
            )
        lines.append("")
    for caption, path in figures.items():
        if caption.split(":")[0] not in results_by_threat:  # not a per-threat figure
            lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    return "\n".join(lines) + "\n"


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


def terminal_summary(results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The study's numbers as an aligned plain-text table per threat model (``reproduce``).

    Proactive rows: accuracy of the defended points, attacked and clean; reactive rows: the
    adaptive attack through the defense, and the defense applied to the weak attack's points.
    The columns come in the report's order, the numbers to trust first (strong, adaptive,
    weak, clean); the bare model's row first; every column names its n, and every accuracy
    carries its 95 % Wilson interval.
    """
    blocks = []
    for key, results in results_by_threat.items():
        if not results:
            continue
        first = results[0]
        t, strong_n = first["threat"], first.get("strong", {}).get("n")
        adaptive_n = next((r["adaptive"]["n"] for r in results if r.get("adaptive")), None)
        head = ["defense", "kind", f"strong (n={strong_n})" if strong_n else "strong",
                f"adaptive (n={adaptive_n})" if adaptive_n else "adaptive",
                f"weak (n={first['n']})", f"clean (n={first['n']})"]  # fmt: skip
        a0, n = first["accuracy"], first["n"]

        def cell(value: Any, size: int | None) -> str:
            return with_interval(value, size) if size else _pct(value)

        rows = [["none", "bare model", cell(a0.get("original_attacked_strong"), strong_n), "",
                 cell(a0.get("original_attacked"), n), cell(a0.get("original"), n)]]  # fmt: skip
        for r in results:
            a = r["accuracy"]
            if r["defense_kind"] == "reactive":
                rows.append([r["defense"], "reactive", "", cell(a.get("adaptive"), adaptive_n),
                             cell(a.get("defended_adversarial"), n),
                             cell(a.get("defensive"), n)])  # fmt: skip
            else:
                rows.append([r["defense"], "proactive",
                             cell(a.get("defensive_attacked_strong"), strong_n), "",
                             cell(a.get("defensive_attacked"), n),
                             cell(a.get("defensive"), n)])  # fmt: skip
        title = (f"{key}: {t['norm']} eps {t['eps']:g}, budget from the "
                 f"{t.get('budget_from', 'defended')} point")  # fmt: skip
        blocks.append(title + "\n" + "\n".join("  " + line for line in
                                                aligned([head, *rows], left=2).splitlines()))  # fmt: skip
    return "\n\n".join(blocks)
