"""Filters of the filter stage (jobs.filter), one module per family.

- basic: ImageCheck (decode, min side, aspect ratio) and CaptionCheck (length, repetition,
  degenerate text): pure, per sample.
- dedup: content hash + perceptual hash per sample, and the global keep-first decision.
- scores: model filters (VLM judge, likelihood alignment, MiniLM similarity), batched.
- funnel: the funnel (in, kept, dropped per reason, in chain order) and its PNG chart.
Every filter names the reasons it can drop a sample for (`reasons`).
"""
