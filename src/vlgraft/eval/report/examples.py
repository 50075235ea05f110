"""The example grids: for VQA and each task, up to N right and N wrong rows of its row file, picked evenly
spread over the rows (deterministic: the same run gives the same page, and the picks are not all from the
first images), each with its thumbnail, question, prediction and reference."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vlgraft.eval.report.formatting import MISSING, is_number, raw
from vlgraft.eval.report.page import Example, ExampleGroup, Page, Section
from vlgraft.eval.report.tasks import task_kind
from vlgraft.eval.report.thumbs import Thumbnails


def spread(items: Sequence, n: int) -> list:
    """Up to ``n`` of ``items``, evenly spaced over them, in their order."""
    if n <= 0:
        return []
    if len(items) <= n:
        return list(items)
    return [items[(k * len(items)) // n] for k in range(n)]


def _text(v) -> str:
    return MISSING if v is None else v if isinstance(v, str) else str(v)


def _question(row: dict) -> list[tuple[str, str]]:
    return [("question", _text(row["question"]))] if "question" in row else []


def vqa_example(row: dict) -> Example:
    fields = _question(row) + [("prediction", _text(row.get("prediction"))), ("reference", _text(row.get("answer")))]
    if "description" in row:
        fields.append(("described as", _text(row["description"])))
    if is_number(row.get("vqa_accuracy")):
        fields.append(("VQA accuracy", raw(row["vqa_accuracy"], 2)))
    ok = row.get("correct") is True
    return Example(ok, "right" if ok else "wrong", fields, " · ".join(
        _text(row[k]) for k in ("type", "id") if k in row))


def pope_example(row: dict) -> Example:
    read_as = row.get("read_as")
    if read_as is None and isinstance(row.get("prediction"), str):
        from vlgraft.eval.metrics.pope import pope_answer

        read_as = pope_answer(row["prediction"])  # rows written before read_as was stored
    ok = read_as is not None and read_as == row.get("label")
    fields = _question(row) + [("prediction", f"{_text(row.get('prediction'))} (read as {_text(read_as)})"),
                               ("reference", _text(row.get("label")))]
    return Example(ok, "right" if ok else "wrong", fields, _text(row.get("setting", "")))


def choice_example(row: dict) -> Example:
    ok = row.get("correct") is True
    fields = _question(row) + [("prediction", f"{_text(row.get('prediction'))} (option {_text(row.get('choice'))})"),
                               ("reference", _text(row.get("answer")))]
    rotation = row.get("rotation")  # circular evaluation: 0 is the options in their own order
    tag = " · ".join(([_text(row["id"])] if "id" in row else []) + ([f"rotation {rotation}"] if rotation else []))
    return Example(ok, "right" if ok else "wrong", fields, tag)


def generic_example(row: dict) -> Example:
    ok = row.get("correct") is True
    reference = next((row[k] for k in ("answer", "label", "reference", "references") if k in row), None)
    fields = _question(row) + [("prediction", _text(row.get("prediction"))), ("reference", _text(reference))]
    return Example(ok, "right" if ok else "wrong", fields, _text(row.get("id", "")))


def caption_groups(rows: list[dict]) -> list[tuple[str, list[tuple[dict, Example]]]]:
    """A caption is not right or wrong: the examples are shown neutral, the half with the higher CIDEr
    apart from the other, each with its score."""
    def cider(r: dict) -> float:
        return r["CIDEr"] if is_number(r.get("CIDEr")) else float("-inf")

    ranked = sorted(rows, key=cider, reverse=True)  # stable: ties keep the file's order
    top = (len(ranked) + 1) // 2

    def example(r: dict, high: bool) -> Example:
        refs = r.get("references")
        refs = " · ".join(map(_text, refs[:3])) + (" · ..." if len(refs) > 3 else "") if isinstance(refs, list) \
            else _text(refs)
        mark = f"CIDEr {raw(r['CIDEr'])}" if is_number(r.get("CIDEr")) else "CIDEr " + MISSING
        return Example(None, mark, [("prediction", _text(r.get("prediction"))), ("references", refs)])

    return [(f"higher CIDEr (upper half of {len(rows)})", [(r, example(r, True)) for r in ranked[:top]]),
            (f"lower CIDEr (lower half of {len(rows)})", [(r, example(r, False)) for r in ranked[top:]])]


def right_wrong_groups(rows: list[dict], make: Callable[[dict], Example]) -> list[tuple[str, list]]:
    made = [(r, make(r)) for r in rows]
    return [("right", [m for m in made if m[1].correct]), ("wrong", [m for m in made if not m[1].correct])]


EXAMPLE_OF_KIND = {"pope": pope_example, "choice": choice_example}


class ImageAssets:
    """Thumbnails as page assets, one per image path however many examples show it."""

    def __init__(self, page: Page) -> None:
        self.page, self.thumbs, self.names = page, Thumbnails(), {}

    def attach(self, ex: Example, path: str) -> None:
        if path not in self.names:
            png, note = self.thumbs.get(path)
            number = sum(name is not None for name, _ in self.names.values()) + 1
            self.names[path] = (self.page.add_asset("examples", f"image-{number:04d}", png) if png else None, note)
        ex.image, ex.image_note = self.names[path]


def example_section(title: str, groups: list[tuple[str, list[tuple[dict, Example]]]], n: int,
                    images: ImageAssets) -> Section:
    s = Section(title)
    for heading, made in groups:
        shown = spread(made, n)
        for row, ex in shown:
            if row.get("image") is not None:  # a row without an image is shown without a picture
                images.attach(ex, _text(row["image"]))
        s.groups.append(ExampleGroup(f"{heading}: {len(shown)} of {len(made)} shown", [ex for _, ex in shown]))
    return s


def example_sections(predictions: list[dict], task_rows: list[dict], task_order: list[str], n: int, page: Page,
                     vqa_title: str = "VQA") -> list[Section]:
    """One grid section for the VQA rows and one per task spec (``task_order`` first, then any other spec the
    rows name)."""
    if n <= 0:
        return []
    images, out = ImageAssets(page), []
    if predictions:
        out.append(example_section(f"Examples: {vqa_title}", right_wrong_groups(predictions, vqa_example), n, images))
    by_task: dict[str, list[dict]] = {}
    for row in task_rows:
        by_task.setdefault(_text(row.get("task", "unnamed task")), []).append(row)
    for spec in [*[t for t in task_order if t in by_task], *[t for t in by_task if t not in task_order]]:
        rows = by_task[spec]
        if task_kind(spec) == "caption":
            groups = caption_groups(rows)
        else:
            groups = right_wrong_groups(rows, EXAMPLE_OF_KIND.get(task_kind(spec), generic_example))
        out.append(example_section(f"Examples: {spec}", groups, n, images))
    return out
