"""The erasure report: its schema (``schema``), built from the database (``build``), in words (``summary``),
its figures (``plots``), rendered as PDF (``pdf``) and as HTML (``html``)."""
