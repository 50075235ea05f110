"""``vlgraft report RUN``: one page (``index.html``, self-contained, and ``report.md`` with its PNGs) of a
run's recipe, loss curve and evaluation — every ``eval.json`` block as tables and bar charts, and grids of
right and wrong examples from its row files. docs/REPORT.md.

Kept free of imports so that registering the subcommand costs nothing: the entry point is
``vlgraft.eval.report.build.write_report`` (``cli.py`` is the command).

* ``collect``: read the run folder (recipe, metrics, eval result, row files) into ``RunInputs``;
* ``sections`` / ``tasks`` / ``examples``: turn them into renderer-neutral ``page`` objects;
* ``figures``: the matplotlib PNGs; ``thumbs``: the example thumbnails (Pillow); ``formatting``: how figures read;
* ``html`` / ``markdown``: render a ``Page``; ``build``: put it together and write the folder atomically.
"""
