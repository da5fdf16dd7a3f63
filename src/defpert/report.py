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

COLUMNS = [
    ("original", "clean, original"),
    ("defensive", "clean, defensive"),
    ("original_attacked", "weak attack, original"),
    ("defensive_attacked", "weak attack, defensive"),
    ("original_attacked_strong", "strong attack, original"),
    ("defensive_attacked_strong", "strong attack, defensive"),
    ("defended_adversarial", "defense on adversarial inputs"),
    ("adaptive", "adaptive attack through defense"),
]


def flags(result: Mapping[str, Any]) -> list[str]:
    """Warnings for a defense whose weak-attack gain does not survive stronger attacks."""
    a = result["accuracy"]
    out = []
    weak_gain = a["defensive_attacked"] - a["original_attacked"]
    if "defensive_attacked_strong" in a:
        strong_gain = a["defensive_attacked_strong"] - a["original_attacked_strong"]
        if weak_gain > 0.02 and strong_gain < 0.5 * weak_gain:
            out.append(
                f"{result['defense']}: the weak-attack gain ({weak_gain:+.1%}) shrinks to "
                f"{strong_gain:+.1%} under the strong attack"
            )
    if "adaptive" in a and "original_attacked_strong" in a:
        adaptive_gain = a["adaptive"] - a["original_attacked_strong"]
        if adaptive_gain < 0.5 * max(weak_gain, 0.0) or a["adaptive"] < 0.05:
            out.append(
                f"{result['defense']}: under the adaptive attack through the defense, accuracy is "
                f"{a['adaptive']:.1%} (strong attack without defense: {a['original_attacked_strong']:.1%})"
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
    from defpert.runs import write_bytes_atomic

    write_bytes_atomic(path, buf.getvalue().encode())


def _pct(v: Any) -> str:
    return f"{v:.1%}" if isinstance(v, float) else "–"


def _threat_title(r: Mapping[str, Any]) -> str:
    t = r["threat"]
    model = f" — {r['model']} model" if r.get("model", "standard") != "standard" else ""
    return f"{t['norm'].upper().replace('LINF', 'L-inf')} PGD, eps={t['eps']}, {t['steps']} steps of {t['step_size']}{model}"


# fmt: off
def _defense_steps(budget: Mapping[str, Any]) -> int:
    """Gradient steps a defensive perturbation spends per image (minmax: its inner attack too)."""
    return int(budget["steps"]) * (1 + int(budget.get("inner_steps", 0)))


def headline(
    results_by_threat: Mapping[str, Sequence[Mapping[str, Any]]],
    models: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Markdown lines: per threat model, every (model, defensive perturbation) by strong accuracy.

    A reactive defense is part of the model at test time, so only an attack through it
    (the adaptive attack) measures it; it is ranked by that number.
    """
    by_norm: dict[str, list[tuple[float, str, str, float, float, int, int]]] = {}
    for results in results_by_threat.values():
        for r in results:
            a, kind = r["accuracy"], r.get("model", "standard")
            if "original_attacked_strong" not in a:
                continue
            rows = by_norm.setdefault(_threat_title({**r, "model": "standard"}), [])
            n_strong = r.get("strong", {}).get("n", r["n"])
            if not any(row[1] == kind and row[2] == "none" for row in rows):
                rows.append((a["original_attacked_strong"], kind, "none", a["original"],
                             a["original_attacked"], n_strong, 0))
            reactive = r["defense_kind"] == "reactive"
            worst = a.get("adaptive") if reactive else a["defensive_attacked_strong"]
            n = r.get("adaptive", {}).get("n", n_strong) if reactive else n_strong
            if worst is not None:
                rows.append((worst, kind, r["defense"], a["defensive"], a["defensive_attacked"],
                             n, _defense_steps(r["defense_budget"])))
    lines = []
    for title, rows in by_norm.items():
        rows.sort(key=lambda row: -row[0])
        best = rows[0]
        lines += [f"## Headline: {title}", "",
                  f"Highest strong-attack accuracy: **{best[0]:.1%}**, {best[1]} model with "
                  f"defensive perturbation {best[2]}. Reactive defenses are ranked by the "
                  "adaptive attack through them. Cost: the model's training time, and the "
                  "gradient steps the defensive perturbation spends on each image.", "",
                  "| model | defensive perturbation | strong (reactive: adaptive) attack | n | weak attack | clean | training seconds | steps per image |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for strong, kind, defense, clean, weak, n, steps in rows:
            secs = models.get(kind, {}).get("training_seconds")
            cost = f"{secs:.0f}" if isinstance(secs, (int, float)) else "–"
            lines.append(f"| {kind} | {defense} | {strong:.1%} | {n} | {weak:.1%} | {clean:.1%} | {cost} | {steps} |")
        lines.append("")
    return lines
# fmt: on


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
    lines = [f"# {title}", ""]
    lines += [f"- {s}" for s in summary]
    if models and len(models) > 1:
        lines += ["", *headline(results_by_threat, models)]
    lines += [
        "",
        "**How to read the tables.** *Weak attack* is the original study's PGD (its exact",
        f"settings). *Strong attack* is the worst case per example over PGD-{strong_steps} with",
        "cross-entropy and with the CW margin (random restarts), APGD-CE, APGD-DLR and Square,",
        "on the first `strong n` examples. *Adaptive attack* attacks through a reactive",
        "defense: the worst case of the weak and strong attacks' points passed through it, BPDA",
        f"(PGD-{strong_steps}, CW margin) and the unrolled defense (the weak attack's PGD). Trust",
        "the strong and adaptive numbers.",
        "",
    ]
    for threat, results in results_by_threat.items():
        first = results[0]
        lines += [f"## RQ1: {_threat_title(first)}", ""]
        lines.append(
            f"n = {first['n']} test examples; strong n = {first.get('strong', {}).get('n', '–')}."
        )
        lines.append("")
        lines.append("| defense | kind | " + " | ".join(h for _, h in COLUMNS) + " |")
        lines.append("|---|---|" + "---:|" * len(COLUMNS))
        for r in results:
            cells = [_pct(r["accuracy"].get(k)) for k, _ in COLUMNS]
            lines.append(f"| {r['defense']} | {r['defense_kind']} | " + " | ".join(cells) + " |")
        warn = [f for r in results for f in flags(r)]
        if warn:
            lines += ["", "**Flagged:**", ""] + [f"- ⚠ {w}" for w in warn]
        lines.append("")
        for caption, path in figures.items():
            if caption.startswith(threat + ":"):
                lines += [f"![{caption}]({path})", f"*{caption}*", ""]
    if sweep_rows:
        lines += ["## Accuracy versus eps", "", "| eps | step | original weak | original strong | defensive weak | defensive strong |", "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in sweep_rows:
            lines.append(
                f"| {row['eps']} | {row['step_size']:.4g} | {_pct(row.get('original_attacked'))} | "
                f"{_pct(row.get('original_attacked_strong'))} | {_pct(row.get('defensive_attacked'))} | "
                f"{_pct(row.get('defensive_attacked_strong'))} |"
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
