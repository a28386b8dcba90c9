"""Live scoring of dives on broadcast video (``fineparser-live``); numpy + OpenCV + onnxruntime, torch-free.

Pipeline: :mod:`runtime.sources` (capture thread + ring buffer) -> :mod:`runtime.segments`
(dive start/end) -> :mod:`runtime.scorer` (encoder + pair head vs the exemplar bank) ->
:mod:`runtime.events` (JSON lines, table, HTTP).  See docs/runtime.md.
"""
