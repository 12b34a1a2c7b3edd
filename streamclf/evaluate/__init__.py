"""``streamclf evaluate``: how well each label does on the user's own footage, and which threshold.

- ``truth``: the TRUTH file (videos, label intervals, an optional image folder), checked up front.
- ``offline``: videos and stills through the daemon's own capture, batcher and batch classifier,
  scores recorded instead of published; decisions replayed by the daemon's ``Decider``.
- ``metrics``: ROC-AUC, average precision, precision/recall/F1, threshold suggestion, event matching.
- ``report``: per-label reports, the terminal table, JSON and the YAML to paste.
- ``plot``: the report picture (matplotlib, optional).
- ``command``: the subcommand itself.
"""
