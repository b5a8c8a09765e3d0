"""`textgen viz`, a wing of its own: what a model's cells do over a text, as one HTML page or
raw json/npz.

    command.py      the entry `textgen viz` calls: trace, rank cells, write the output
    page.py         packing a trace into the page's size budget and inlining the assets
    trace_files.py  the raw json/npz trace files
    viz_page/       the page's HTML, script and style

It uses the core (tracer, cell features) and nothing in the core imports it.
"""
