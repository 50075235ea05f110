"""The report's measurement sections, in page order: the recipe, the loss curve, VQA by answer type and
the text ability (the tasks' sections are in ``tasks.py``, the example grids in ``examples.py``). Each
takes its slice of the inputs and returns a ``Section``, adding its charts to the page's assets."""

from __future__ import annotations

from vlgraft.eval.report import figures
from vlgraft.eval.report.formatting import MISSING, count, flatten, is_number, key_value_rows, pct, raw, value
from vlgraft.eval.report.page import Figure, Page, Section, Table

# the top-level keys of eval.json that are not the VQA block
NON_VQA_KEYS = {"tasks", "text_ability"}
VQA_KEYS = {"data", "n", "accuracy", "f1", "vqa_accuracy", "by_type", "seconds", "questions_per_s", "precision",
            "turns", "describe_first", "val_loss", "val_loss_records"}
TEXT_KEYS = {"text_set", "text_set_sha1", "precision", "before", "after", "change", "intervals"}


def extras(block: dict, known: set[str]) -> Table | None:
    """The keys of a known block this report does not know yet, shown rather than dropped."""
    pairs = [(k, v) for k, v in block.items() if k not in known]
    flat = [p for k, v in pairs for p in flatten({k: v})]
    return Table(["key", "value"], key_value_rows(flat), "other figures") if flat else None


def recipe_section(recipe: dict | None) -> Section:
    s = Section("Recipe")
    if recipe is None:
        s.notes.append("The run folder has no recipe.yaml.")
        return s

    def name_of(part) -> str:
        return str(part.get("name", MISSING)) if isinstance(part, dict) else str(part if part is not None else MISSING)

    methods = recipe.get("methods") or []
    method_names = ", ".join(name_of(m) for m in methods) if isinstance(methods, list) else name_of(methods)
    rows = [["name", str(recipe.get("name", MISSING))], ["vision", name_of(recipe.get("vision"))],
            ["LLM", name_of(recipe.get("llm"))], ["connector", name_of(recipe.get("connector"))],
            ["methods", method_names or "none"]]
    s.tables.append(Table(["part", "name"], rows))
    return s


def _series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for k, m in enumerate(metrics):
        if is_number(m.get(key)):
            xs.append(m["step"] if is_number(m.get("step")) else k)
            ys.append(m[key])
    return xs, ys


def loss_section(metrics: list[dict], page: Page) -> Section:
    s = Section("Loss curve")
    series = {label: xy for key, label in (("loss", "training loss"), ("val_loss", "held-out loss"))
              if (xy := _series(metrics, key))[0]}
    if not series:
        s.notes.append(f"metrics.jsonl has {len(metrics)} lines and no loss values.")
        return s
    png = figures.line_chart(series, "loss", "step", "loss per token")
    s.figures.append(Figure(page.add_asset("figures", "loss", png), "the loss curve: loss against step"))
    xs, ys = series.get("training loss", next(iter(series.values())))
    s.notes.append(f"{len(xs)} logged steps; loss {raw(ys[0])} at step {xs[0]}, {raw(ys[-1])} at step {xs[-1]}.")
    if "held-out loss" in series and "training loss" in series:
        vx, vy = series["held-out loss"]
        s.notes.append(f"held-out loss {raw(vy[-1])} at step {vx[-1]} (measured {len(vx)}x).")
    return s


def has_vqa(result: dict) -> bool:
    return "by_type" in result or "accuracy" in result


def vqa_section(result: dict, page: Page) -> Section:
    s = Section(f"VQA: {value('data', result.get('data', 'the recipe eval set'))}")  # data may be a mapping
    by_type = result.get("by_type") if isinstance(result.get("by_type"), dict) else {}
    types = sorted(by_type, key=lambda t: t != "all")  # overall first, then eval's own (sorted) order
    with_vqa = any(isinstance(b, dict) and "vqa_accuracy" in b for b in by_type.values())
    cols = ["answer type", "questions", "correct", "exact match (%)", "token F1 (%)"]
    rows = []
    for t in types:
        b = by_type[t] if isinstance(by_type[t], dict) else {}
        row = [t, count(b.get("n")), count(b.get("correct")), pct(b.get("accuracy")), pct(b.get("f1"))]
        rows.append(row + ([pct(b.get("vqa_accuracy"))] if with_vqa else []))
    if rows:
        s.tables.append(Table(cols + (["VQA accuracy (%)"] if with_vqa else []), rows, "by answer type"))
    summary = [["questions", count(result.get("n"))], ["exact match", pct(result.get("accuracy")) + "%"],
               ["token F1", pct(result.get("f1")) + "%"]]
    if "vqa_accuracy" in result:
        summary.append(["VQA accuracy", pct(result["vqa_accuracy"]) + "%"])
    if "val_loss" in result:
        records = f" ({count(result['val_loss_records'])} records)" if "val_loss_records" in result else ""
        summary.append(["held-out loss per answer token", raw(result["val_loss"]) + records])
    for key, label, fmt in (("seconds", "seconds", lambda v: raw(v, 1)), ("questions_per_s", "questions/s",
                            lambda v: raw(v, 1)), ("precision", "precision", str), ("turns", "turns", str)):
        if key in result:
            summary.append([label, fmt(result[key])])
    s.tables.append(Table(["measure", "value"], summary, "overall"))
    d = result.get("describe_first")
    if isinstance(d, dict):
        gold = (f"; its description equals the gold one on {pct(d.get('gold_match'))}% of the "
                f"{count(d.get('with_gold'))} images that have one" if d.get("with_gold") else "")
        s.notes.append(f"Described first ({d.get('request', MISSING)!r}): {count(d.get('described'))} images{gold}.")
    if (t := extras(result, VQA_KEYS | NON_VQA_KEYS)) is not None:
        s.tables.append(t)
    bars = [(t, by_type[t]["accuracy"]) for t in types
            if isinstance(by_type[t], dict) and is_number(by_type[t].get("accuracy"))]
    if bars:
        png = figures.hbar_chart([t for t, _ in bars], [100 * v for _, v in bars], "exact match per answer type",
                                 "exact match (%)", xmax=100)
        s.figures.append(Figure(page.add_asset("figures", "vqa-by-type", png), "exact match per answer type"))
    return s


def text_section(block: dict, rows: list[dict], n_rows: int) -> Section:
    """Text-only ability before and after training (``eval/text.py``: ``before_after``), and a few of its
    questions with both answers."""
    from vlgraft.eval.report.examples import spread

    s = Section("Text ability (text only, before and after training)")
    b = block.get("before") if isinstance(block.get("before"), dict) else {}
    a = block.get("after") if isinstance(block.get("after"), dict) else {}
    c = block.get("change") if isinstance(block.get("change"), dict) else {}
    s.notes.append(f"Text set {block.get('text_set', MISSING)}: {count(b.get('n_ppl'))} instructions, "
                   f"{count(b.get('n_qa'))} questions; precision {block.get('precision', MISSING)}"
                   + ("; the before figures come from the cache." if b.get("cached") else "."))
    def interval(ci, scale: float = 1.0) -> str:  # the 95% interval eval/text.py gives beside a figure
        ok = isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci)
        return f" [{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]" if ok else ""

    table = []
    if "ppl" in b or "ppl" in a:
        ratio = f" (x{raw(c['ppl_ratio'])}{interval(c.get('ppl_ratio_ci'))})" if "ppl_ratio" in c else ""
        table.append(["perplexity per response token", raw(b.get("ppl")) + interval(b.get("ppl_ci")),
                      raw(a.get("ppl")) + interval(a.get("ppl_ci")),
                      (f"{c['ppl']:+.3f}" if is_number(c.get("ppl")) else MISSING) + ratio])
    for key, label, diff in (("qa_acc", "QA accuracy, contains (%)", "qa_diff_ci"),
                             ("qa_exact", "QA exact first line (%)", "qa_exact_diff_ci")):
        if key in b or key in a:
            table.append([label, pct(b.get(key)) + interval(b.get(f"{key}_ci"), 100),
                          pct(a.get(key)) + interval(a.get(f"{key}_ci"), 100),
                          (f"{100 * c[key]:+.2f} pts" if is_number(c.get(key)) else MISSING)
                          + interval(c.get(diff), 100)])
    if table:
        s.tables.append(Table(["measure", "before", "after", "change (95% interval)"], table))
    if (t := extras(block, TEXT_KEYS)) is not None:
        s.tables.append(t)
    if rows and n_rows:
        def answer(row: dict, when: str) -> str:
            ok = row.get(f"{when}_correct")
            return f"{row.get(when, MISSING)}" + ("" if ok is None else " ✓" if ok else " ✗")

        shown = spread(rows, n_rows)
        s.tables.append(Table(["question", "accepted answers", "before", "after"],
                              [[str(r.get("question", r.get("id", MISSING))),
                                ", ".join(map(str, r["answers"])) if isinstance(r.get("answers"), list) else MISSING,
                                answer(r, "before"), answer(r, "after")] for r in shown],
                              f"questions ({len(shown)} of {len(rows)}; ✓ accepted)"))
    return s
