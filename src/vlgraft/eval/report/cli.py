"""``vlgraft report RUN``: the run's evaluation as a page (``build.write_report``; docs/REPORT.md)."""

from __future__ import annotations

from vlgraft.eval.report.page import DEFAULT_EXAMPLES  # page.py imports nothing heavy


def register(sub) -> None:
    r = sub.add_parser("report", help="an HTML + markdown page of a run's evaluation: tables, charts, examples")
    r.add_argument("run", nargs="?", default="runs/default", help="run folder (holding eval.json and/or metrics.jsonl)")
    r.add_argument("--out", help="report folder (default: RUN/report); an earlier report there is replaced")
    r.add_argument("--eval", dest="eval_file", metavar="FILE",
                   help="eval result to show instead of RUN/eval.json (its row files beside it, same stem)")
    r.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, metavar="N",
                   help=f"right and wrong examples shown per task, each (default {DEFAULT_EXAMPLES}; 0: none)")
    r.set_defaults(func=cmd_report)


def cmd_report(args) -> None:
    from vlgraft.eval.report.build import write_report

    for path in write_report(args.run, args.out, args.eval_file, args.examples):
        print(path)
