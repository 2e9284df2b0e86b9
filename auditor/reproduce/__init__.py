"""Published tables re-measured: ``flaudit reproduce NAME`` runs a paper's experiments with
flaudit's own attacks, scored as the audit scores a cell (identifiable recovery against the
attack's data-blind nulls), and writes each table with the paper's numbers beside ours.

``registry.REPRODUCTIONS`` names the papers; ``tables`` holds the typed rows and their
Markdown; ``run`` writes a run folder; each paper has its own module (``scale_mia``)."""
