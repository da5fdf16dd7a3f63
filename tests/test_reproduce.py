"""``defpert reproduce --quick`` on digits: every file, a resumable run, a report that renders."""

import csv
import json
import re
import shutil

import pytest

from defpert.cli import main
from defpert.results import SweepRow

# --quick, on fewer test images: what is checked here is the study's files, not its numbers
QUICK = ["--quick", "--dataset", "digits", "--limit", "150", "--strong-limit", "50",
         "--adaptive-limit", "12"]  # fmt: skip
FILES = ["report.html", "report.md", "results.csv", "metrics.json", "config.json"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, isolated_environment):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    with isolated_environment():
        assert main(["reproduce", *QUICK, "--out", str(out)]) == 0
    return out


def test_writes_every_file(quick_run):
    for name in FILES:
        assert (quick_run / name).is_file(), name
    figures = sorted(p.name for p in (quick_run / "figures").glob("*.png"))
    assert figures == [
        "grid-l2.png",
        "grid-linf.png",
        "sweep-linf.png",
        "tsne-l2.png",
        "tsne-linf.png",
    ]
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert set(metrics["rq1"]) == {"linf", "l2"}
    assert {r["defense"] for r in metrics["rq1"]["linf"]} == {
        "ce",
        "margin",
        "robustify",
        "anti-adversary",
        "hedge",
    }
    with open(quick_run / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    for results in metrics["rq1"].values():
        for r in results:  # the strong attack never beats the weak one on the same examples
            weak_same = r["strong"]["weak_on_same_examples"]["original_attacked"]
            assert r["accuracy"]["original_attacked_strong"] <= weak_same + 1e-9
            if r["defense_kind"] == "reactive":
                assert "defensive_attacked" not in r["accuracy"]  # no number without a threat model
                assert r["accuracy"]["adaptive"] <= r["accuracy"]["defensive"] + 1e-9
                assert "bare_strong_adaptive_examples" in r["accuracy"]
    for row in map(SweepRow.from_json, metrics["sweep"]):
        for side in (row.bare, row.defended):  # the strong suite against the weak on its examples
            assert side.strong.n == side.weak_on_strong_examples.n > 0
            assert side.strong.accuracy <= side.weak_on_strong_examples.accuracy + 1e-9
    md = (quick_run / "report.md").read_text()
    assert (
        "weak attack" in md.lower() and "strong attack" in md.lower() and "adaptive" in md.lower()
    )
    # every piece's cost in passes, as counted: the hedge row's adaptive attack among them
    hedge = next(r for r in metrics["rq1"]["linf"] if r["defense"] == "hedge")
    cost = hedge["passes"]["adaptive-hedge"]
    assert "| hedge | " in md and f"{cost['forward']:,.0f} / {cost['backward']:,.0f}" in md
    assert md.count("Cost in passes of the classifier per example") == 2  # one per threat model


def test_second_run_reuses_finished_stages(quick_run, capsys):
    capsys.readouterr()
    assert main(["reproduce", *QUICK, "--out", str(quick_run)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    # the time per stage is printed at the end, also when every stage was reused
    metrics = json.loads((quick_run / "metrics.json").read_text())
    assert "\nstage " in captured.out, "no time-per-stage table"
    table = captured.out.split("\nstage ", 1)[1].split("report:")[0]
    for name, seconds in metrics["compute_seconds"].items():
        assert re.search(rf"^{re.escape(name)}\s+{seconds:,.0f}\s", table, re.M), name
    assert table.strip().splitlines()[-1].startswith("total")
    for stage in (
        "model (standard): reused",
        "RQ1 linf: reused",
        "RQ1 l2: reused",
        "sweep: reused",
    ):
        assert stage in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _start_chromium(opts):
    """The browser, started a second time if the first start fails.

    On a loaded machine Chromium can miss chromedriver's start-up deadline; that says
    nothing about the report, which every assertion below is about.
    """
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    def start():
        return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)

    try:
        return start()
    except WebDriverException as first:
        print(f"Chromium did not start ({first.msg}); trying once more")
        return start()


_MISSING = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", shutil.which("chromedriver")))
            if found is None]  # fmt: skip


@pytest.mark.skipif(
    bool(_MISSING),
    reason=f"not installed: {', '.join(_MISSING)} (Debian's chromium and chromium-driver; .ci/run installs both)",
)
@pytest.mark.parametrize("width", [390, 1280], ids=["phone", "laptop"])
def test_report_figures_load_in_headless_chromium(quick_run, width):
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--window-size={width},844",
    ):
        opts.add_argument(flag)
    driver = _start_chromium(opts)
    try:
        driver.get((quick_run / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
        )
        assert len(images) == 5
        broken = [alt for complete, width, alt in images if not (complete and width > 0)]
        assert broken == []
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth > window.innerWidth + 1"
        )
        assert not overflow  # tables scroll inside their box; the page fits a phone
        # the numbers to trust are visible without scrolling any table sideways
        visible = driver.execute_script(
            "return [...document.querySelectorAll('th')]"
            ".filter(th => /strong attack|adaptive attack/.test(th.innerText))"
            ".map(th => [th.innerText, th.getBoundingClientRect().right <= window.innerWidth])"
        )
        assert visible and all(ok for _, ok in visible), visible
    finally:
        driver.quit()


def test_several_models_side_by_side_with_a_headline(tmp_path):
    out = tmp_path / "run"
    argv = ["reproduce", "--quick", "--dataset", "digits", "--models", "standard,fgsm-rs",
            "--defense", "ce,hedge", "--epochs", "8", "--adv-epochs", "10", "--limit", "60",
            "--strong-limit", "20", "--adaptive-limit", "8",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for results in metrics["rq1"].values():  # --limit and --strong-limit
        assert {(r["n"], r["strong"]["n"]) for r in results} == {(60, 20)}
        assert {r["adaptive"]["n"] for r in results if r["defense"] == "hedge"} == {8}
    assert set(metrics["models"]) == {"standard", "fgsm-rs"}
    assert metrics["models"]["fgsm-rs"]["training"] == "adversarial-fgsm-rs"
    assert set(metrics["rq1"]) == {"linf", "l2", "linf-fgsm-rs", "l2-fgsm-rs"}
    budget = metrics["defender_budget"]  # on the robust model, ce (robustify not asked for)
    assert budget["model"] == "fgsm-rs"
    assert sorted({r["eps_def"] for r in budget["rows"]}) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert {r["defense"] for r in budget["rows"]} == {"ce"}
    assert (out / "figures" / "budget-fgsm-rs.png").is_file()
    assert "Accuracy versus the defender's budget" in (out / "report.md").read_text()
    card = json.loads((out / "model-fgsm-rs" / "model.json").read_text())
    assert card["threat_trained_against"]["eps"] == 0.3
    assert card["training"]["lr_schedule"] == "cyclic" and card["training"]["adv_warmup"] == 2
    assert card["epochs"] == 10  # --adv-epochs
    standard = json.loads((out / "model" / "model.json").read_text())
    assert standard["epochs"] == 8  # --epochs
    md = (out / "report.md").read_text()
    assert "threat models for digits: linf eps 0.2" in md  # the defaults used, stated
    assert "test examples: 60; strong attack on 20, adaptive attack on 8" in md
    compute = metrics["compute_seconds"]  # the total cost of the study, stage by stage
    assert set(compute) == {"train standard", "train fgsm-rs", "rq1 linf", "rq1 l2",
                            "rq1 linf-fgsm-rs", "rq1 l2-fgsm-rs", "sweep", "budget fgsm-rs", "total"}  # fmt: skip
    assert compute["total"] == pytest.approx(sum(v for k, v in compute.items() if k != "total"))
    assert min(compute.values()) > 0 and f"compute time: {compute['total']:.0f} s in all" in md
    assert "adversarial training: linf eps 0.3" in md
    assert md.count("## Headline:") == 2
    for kind in ("standard", "fgsm-rs"):
        assert f"| {kind} | none |" in md  # each model without a defensive perturbation
    with open(out / "results.csv") as fh:
        assert {row["model"] for row in csv.DictReader(fh)} == {"standard", "fgsm-rs"}


def test_headline_ranks_by_strong_or_adaptive_accuracy_and_states_cost():
    from defpert.report.document import headline

    threat = {"norm": "linf", "eps": 0.2, "steps": 20, "step_size": 0.01}

    def result(model, defense, kind, strong, adaptive=None, inner=0):
        acc = {"original": 0.99, "original_attacked": 0.9, "original_attacked_strong": 0.8,
               "defensive": 1.0, "defensive_attacked": 0.95, "defensive_attacked_strong": strong}  # fmt: skip
        r = {"threat": threat, "model": model, "defense": defense, "defense_kind": kind, "n": 1000,
             "dataset": "mnist", "split": "test",
             "accuracy": acc, "strong": {"n": 500},
             "defense_budget": {"steps": 20, **({"passes_per_step": 1 + inner} if inner else {})}}  # fmt: skip
        if adaptive is not None:
            acc["adaptive"], r["adaptive"] = adaptive, {"n": 200}
        return r

    results = {"linf": [result("standard", "robustify", "proactive", 0.3, inner=5),
                        result("standard", "hedge", "reactive", 0.95, adaptive=0.1)],
               "linf-pgd": [result("pgd", "ce", "proactive", 0.85)]}  # fmt: skip
    md = "\n".join(headline(results, {"standard": {"training_seconds": 100.0},
                                      "pgd": {"training_seconds": 900.0}}))  # fmt: skip
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    strong_rows, reactive_rows = rows[1:5], rows[6:]  # each table after its header
    assert [r.split(" | ")[:3] for r in strong_rows] == [
        ["| pgd", "ce", "85.0%"], ["| standard", "none", "80.0%"], ["| pgd", "none", "80.0%"],
        ["| standard", "robustify", "30.0%"],
    ]  # fmt: skip
    # reactive defenses: ranked apart, by the adaptive attack (10 %, not 95 %), on their own n
    assert [r.split(" | ")[:3] for r in reactive_rows] == [["| standard", "hedge", "10.0%"]]
    assert reactive_rows[0].split(" | ")[3:5] == ["–", "200"]  # no bare number given: a dash
    assert strong_rows[0].endswith("| 500 | 95.0% | 100.0% | 900 | 20 |")
    assert strong_rows[3].endswith("| 120 |")  # robustify 20 x (1 + 5)
    assert (
        "Highest strong-attack accuracy: **85.0%** (n=500), pgd model with defensive perturbation ce"
        in md
    )


def test_terminal_summary_is_an_aligned_table_with_each_columns_n():
    from defpert.report.document import terminal_summary

    threat = {"norm": "linf", "eps": 0.2, "steps": 20, "step_size": 0.01, "budget_from": "defended"}
    acc = {"original": 0.99, "original_attacked": 0.9, "original_attacked_strong": 0.8,
           "defensive": 1.0, "defensive_attacked": 0.95, "defensive_attacked_strong": float("nan")}  # fmt: skip
    results = {"linf": [
        {"threat": threat, "defense": "ce", "defense_kind": "proactive", "n": 300,
         "dataset": "mnist", "split": "test", "accuracy": acc, "strong": {"n": 100}},
        {"threat": threat, "defense": "hedge", "defense_kind": "reactive", "n": 300,
         "dataset": "mnist", "split": "test",
         "accuracy": {**acc, "defended_adversarial": 0.5, "adaptive": 0.25},
         "strong": {"n": 100}, "adaptive": {"n": 30}},
    ]}  # fmt: skip
    text = terminal_summary(results)
    lines = text.splitlines()
    assert lines[0] == "linf: linf eps 0.2, budget from the defended point"
    # the report's order: the numbers to trust first
    assert lines[1].split() == ["defense", "kind", "strong", "(n=100)", "adaptive", "(n=30)",
                                "weak", "(n=300)", "clean", "(n=300)"]  # fmt: skip
    # every accuracy with its 95 % Wilson interval at its column's n
    assert lines[2].split() == ["none", "bare", "model", "80.0%", "[71.1,", "86.7]", "90.0%",
                                "[86.1,", "92.9]", "99.0%", "[97.1,", "99.7]"]  # fmt: skip
    assert lines[3].split() == ["ce", "proactive", "–", "95.0%", "[91.9,", "96.9]", "100.0%",
                                "[98.7,", "100.0]"]  # nan shows a dash  # fmt: skip
    assert lines[4].split() == ["hedge", "reactive", "25.0%", "[14.2,", "44.4]", "50.0%",
                                "[44.4,", "55.6]", "100.0%", "[98.7,", "100.0]"]  # fmt: skip
    # right-aligned: a column's numbers end where its header ends
    end = lines[1].index("strong (n=100)") + len("strong (n=100)")
    assert lines[2].index("[71.1, 86.7]") + 12 == end
    end = lines[1].index("adaptive (n=30)") + len("adaptive (n=30)")
    assert lines[4].index("[14.2, 44.4]") + 12 == end
    assert "nan" not in text and "{" not in text


def test_every_dp_setting_of_the_study_is_declared_once_in_its_dp_options():
    """The study's ``dp`` runs take their settings from one ``DPOptions`` (no field of it is
    declared again on the study's config), and the sweeps keep the study's settings."""
    import dataclasses

    from defpert.study.options import DPOptions
    from defpert.study.reproduce import ReproduceConfig

    study = {f.name for f in dataclasses.fields(ReproduceConfig)}
    assert not study & ({f.name for f in dataclasses.fields(DPOptions)} - {"seed"})
    config = ReproduceConfig.for_dataset("digits", quick=True, seed=3)
    config.dp.search_precision, config.dp.budget_from = "bf16", "original"
    threat = config.threats[0]
    dp = config.dp_config(threat)
    assert (dp.norm, dp.eps, dp.seed, dp.strong_limit) == (threat["norm"], threat["eps"], 3, 100)
    assert (dp.search_precision, dp.budget_from, dp.inner_steps) == ("bf16", "original", 5)
    assert config.train_config("standard").seed == 3


def test_the_conclusion_judges_a_gain_by_its_paired_interval():
    """A gain on the same examples is judged by the examples on which the two differ: the
    same +3.9 points is beyond the uncertainty when few examples differ, and within it when
    many do (then the two unpaired intervals would say the same for both)."""
    from defpert.report.document import conclusion
    from defpert.wording import PairedDifference

    threat = {"norm": "linf", "eps": 0.2, "steps": 20, "step_size": 0.01, "budget_from": "defended"}

    def study(paired):
        acc = {"original": 0.99, "defensive": 0.99, "original_attacked_strong": 0.93,
               "defensive_attacked_strong": 0.969}  # fmt: skip
        strong = {"n": 1000, **({"paired": paired.as_json()} if paired else {})}
        return {"linf": [{"threat": threat, "defense": "robustify", "defense_kind": "proactive",
                          "dataset": "mnist", "split": "test", "n": 10000, "accuracy": acc,
                          "strong": strong}]}  # fmt: skip

    tight = PairedDifference(930, 39, 0, 31)
    few = "\n".join(conclusion(study(tight)))
    assert "`robustify`, 96.9% [95.6, 97.8] against the bare model's 93.0% [91.2, 94.4]" in few
    low, high = tight.interval95()
    assert 0 < low < 0.039 < high
    assert (f"+3.9 points, paired 95 % interval [{100 * low:+.1f}, {100 * high:+.1f}]: "
            "more than its paired uncertainty") in few  # fmt: skip
    many = "\n".join(conclusion(study(PairedDifference(0, 969, 930, 0))))
    assert "within its paired uncertainty" in many
    assert "+3.9 points, more than the uncertainty" in "\n".join(conclusion(study(None)))
