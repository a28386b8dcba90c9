"""The spotter at run time: :mod:`fineparser.spotter_runner` (shared with calibration's tuning and variants).

The session runs it on the consumer side, on every frame in stream order, and feeds its probabilities to
``fineparser.dive_state.DiveStateMachine``; capture never waits for it.
"""

from fineparser.spotter_runner import (  # noqa: F401  (re-exported: the runtime and its callers use these names)
    ADD_SPOTTER_HINT,
    SPOTTER_THREADS,
    SpotterError,
    SpotterRunner,
    has_spotter,
    spotter_segmenter_settings,
)
