"""Dive numbers, degrees of difficulty, quality factors, judging and step labels of the synthetic world.

Everything here is pure (no rendering): which dives exist at which height and how hard they are,
how a dive's visible quality turns into judge awards, and how awards turn into a final score.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

PLATFORM = "10m"
SPRINGBOARD = "3m"
HEIGHTS = (PLATFORM, SPRINGBOARD)

# Degrees of difficulty of the FINA (now World Aquatics) Table of Degree of Difficulty, Diving
# Rules 2017-2021, Appendix 2 (springboard) and Appendix 4 (platform), transcribed by hand; see
# docs/synthetic.md for the caveat.  Only dives that enter head first are used, which keeps the
# renderer's entry rule simple (odd half-somersaults standing, even half-somersaults armstand).
DIVE_TABLE: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        PLATFORM: MappingProxyType(
            {
                "107B": 3.0,
                "107C": 2.8,
                "109B": 4.1,
                "109C": 3.7,
                "207B": 3.6,
                "207C": 3.3,
                "307C": 3.4,
                "407C": 3.2,
                "5253B": 3.2,
                "5255B": 3.6,
                "626B": 3.6,
                "626C": 3.3,
                "6243D": 3.2,
                "6245D": 3.6,
            }
        ),
        SPRINGBOARD: MappingProxyType(
            {
                "105B": 2.4,
                "107B": 3.1,
                "107C": 2.8,
                "109C": 3.8,
                "205B": 3.0,
                "205C": 2.8,
                "207C": 3.4,
                "305B": 3.0,
                "305C": 2.8,
                "307C": 3.5,
                "405B": 3.0,
                "407C": 3.4,
                "5152B": 3.0,
                "5154B": 3.4,
                "5156B": 3.9,
            }
        ),
    }
)

DIRECTIONS = ("forward", "back", "reverse", "inward")
POSITIONS = MappingProxyType({"A": "straight", "B": "pike", "C": "tuck", "D": "free"})

# ----------------------------------------------------------------------------- step labels
# Per-frame step types (ids are indices).  Take-off is one id per group, flight has several
# sub-steps, entry is one id, so in every clip the second distinct label starts the flight and
# the last distinct label is the entry (the two transitions the model learns).
STEP_TYPES = (
    "take-off forward",  # 0
    "take-off back",  # 1
    "take-off reverse",  # 2
    "take-off inward",  # 3
    "take-off armstand forward",  # 4
    "take-off armstand back",  # 5
    "somersault straight",  # 6
    "somersault pike",  # 7
    "somersault tuck",  # 8
    "somersault free",  # 9
    "twist",  # 10
    "come-out",  # 11
    "entry",  # 12
)
TAKEOFF_LABELS = MappingProxyType(
    {"forward": 0, "back": 1, "reverse": 2, "inward": 3, "armstand forward": 4, "armstand back": 5}
)
SOMERSAULT_LABELS = MappingProxyType({"A": 6, "B": 7, "C": 8, "D": 9})
TWIST_LABEL = 10
COME_OUT_LABEL = 11
ENTRY_LABEL = 12
STEP_OF_TYPE = tuple(0 if i <= 5 else (2 if i == ENTRY_LABEL else 1) for i in range(len(STEP_TYPES)))
"""Coarse step (index into fineparser.spec.STEP_NAMES) of every step type."""

_DIVE_RE = re.compile(r"^([1-6])(\d)(\d)(\d)?([ABCD])$")


@dataclass(frozen=True)
class DiveInfo:
    """What a dive number says: group, direction, half somersaults, half twists and position."""

    number: str
    group: int  # first digit: 1 forward, 2 back, 3 reverse, 4 inward, 5 twisting, 6 armstand
    direction: str  # forward/back/reverse/inward, the rotation family of the take-off
    armstand: bool
    half_somersaults: int
    half_twists: int
    position: str  # A, B, C or D

    @property
    def somersaults(self) -> float:
        """Number of somersaults (e.g. 3.5)."""
        return self.half_somersaults / 2.0

    @property
    def twists(self) -> float:
        """Number of twists (e.g. 1.5)."""
        return self.half_twists / 2.0

    @property
    def takeoff_label(self) -> int:
        """Step type id of this dive's take-off."""
        key = f"armstand {self.direction}" if self.armstand else self.direction
        return TAKEOFF_LABELS[key]

    @property
    def somersault_label(self) -> int:
        """Step type id of this dive's somersault phases."""
        return SOMERSAULT_LABELS[self.position]


def parse_dive_number(number: str) -> DiveInfo:
    """Decode a FINA dive number such as '107B', '5253B' or '6243D'."""
    match = _DIVE_RE.match(number.strip().upper())
    if not match:
        raise ValueError(f"not a dive number: {number!r}")
    d1, d2, d3, d4, position = match.groups()
    group = int(d1)
    if group == 5:
        if d4 is None:
            raise ValueError(f"twisting dive {number!r} needs four digits")
        if d2 not in "1234":
            raise ValueError(f"twisting dive {number!r}: second digit must be 1-4")
        direction, half_soms, half_twists, armstand = DIRECTIONS[int(d2) - 1], int(d3), int(d4), False
    elif group == 6:
        if d2 not in "12":
            raise ValueError(f"armstand dive {number!r}: only forward (61..) and back (62..) are modelled")
        direction = DIRECTIONS[int(d2) - 1]
        half_soms, half_twists, armstand = int(d3), int(d4 or 0), True
    else:
        if d4 is not None:
            raise ValueError(f"dive {number!r}: four digits only for twisting and armstand dives")
        direction, half_soms, half_twists, armstand = DIRECTIONS[group - 1], int(d3), 0, False
    return DiveInfo(number.strip().upper(), group, direction, armstand, half_soms, half_twists, position)


def difficulty(number: str, height: str) -> float:
    """Degree of difficulty of a dive number at a height ('10m' or '3m') from DIVE_TABLE."""
    try:
        return DIVE_TABLE[height][number]
    except KeyError:
        raise KeyError(f"dive {number} is not in the {height} table of the synthetic world") from None


# ----------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class Quality:
    """What a judge sees, each factor in [0, 1] (1 = perfect)."""

    takeoff_height: float  # apex of the flight above the board
    takeoff_distance: float  # safe but close distance from the board end (too close or too far is worse)
    tightness: float  # how closed the pike/tuck (or how straight the layout) is while somersaulting
    body_line: float  # straight legs, no split, no pike in the straight phases (take-off, come-out, entry)
    entry_angle: float  # vertical entry is 1; over- or under-rotation lowers it
    splash: float  # small ("rip") entry splash is 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (0.0 <= value <= 1.0) or math.isnan(value):
                raise ValueError(f"quality factor {field.name}={value} is outside [0, 1]")

    def as_dict(self) -> dict[str, float]:
        """The factors as a plain dict (for JSON)."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def raised(self, amount: float) -> Quality:
        """Every factor raised by ``amount`` (clipped to 1); used to check monotonic judging."""
        return Quality(**{k: min(1.0, v + amount) for k, v in self.as_dict().items()})


QUALITY_FACTORS = tuple(f.name for f in dataclasses.fields(Quality))
QUALITY_WEIGHTS = MappingProxyType(
    {
        "takeoff_height": 0.15,
        "takeoff_distance": 0.10,
        "tightness": 0.20,
        "body_line": 0.15,
        "entry_angle": 0.20,
        "splash": 0.20,
    }
)
FACTOR_SPREAD = 0.07
"""Standard deviation of each quality factor around the diver's form.  With 0.17 (world 1.0) any single
factor explained the final score only to rho 0.64-0.71 (0.84-0.86 now), too weak a cue for the `tiny`
network to find within the 30-minute CPU budget; 0.07 keeps the factors distinct but lets each one speak
for the whole dive (see docs/train.md)."""
JUDGE_NOISE_SD = 0.35
"""Standard deviation of one judge's disagreement with the expected award (points)."""


def sample_quality(rng: np.random.Generator) -> Quality:
    """Sample a dive's quality: a diver form level plus independent variation per factor."""
    # A shared "form" makes factors correlated like real dives (good divers are good at most
    # things), while the per-factor spread keeps every factor informative on its own.
    form = rng.beta(4.0, 2.0)
    values = np.clip(form + rng.normal(0.0, FACTOR_SPREAD, size=len(QUALITY_FACTORS)), 0.0, 1.0)
    return Quality(**{name: round(float(v), 4) for name, v in zip(QUALITY_FACTORS, values, strict=True)})


def expected_judge_award(quality: Quality) -> float:
    """Expected award (0-10) of a judge for a dive of this quality; independent of the dive number."""
    weighted = sum(QUALITY_WEIGHTS[name] * getattr(quality, name) for name in QUALITY_FACTORS)
    # Linear in every factor with positive weights: raising any factor never lowers the award.
    return float(min(10.0, max(0.0, 10.0 * weighted)))


def round_half_point(value: float) -> float:
    """Round to the judges' half-point grid and clip to 0..10."""
    return float(min(10.0, max(0.0, math.floor(value * 2.0 + 0.5) / 2.0)))


def sample_judge_scores(
    expected: float,
    rng: np.random.Generator,
    num_judges: int = 7,
    judge_bias: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Awards of a panel: expected award + per-judge bias + noise, on half points within 0..10."""
    if num_judges not in (5, 7):
        raise ValueError(f"num_judges must be 5 or 7, got {num_judges}")
    bias = np.zeros(num_judges) if judge_bias is None else np.asarray(judge_bias, dtype=np.float64)
    if bias.shape != (num_judges,):
        raise ValueError(f"judge_bias must have {num_judges} entries")
    raw = expected + bias + rng.normal(0.0, JUDGE_NOISE_SD, size=num_judges)
    return tuple(round_half_point(float(v)) for v in raw)


def final_score(judge_scores: Sequence[float], difficulty: float) -> float:
    """FINA rule: drop the highest and lowest (two each with 7 judges), sum the middle three x DD."""
    scores = sorted(float(s) for s in judge_scores)
    if len(scores) not in (5, 7):
        raise ValueError(f"need 5 or 7 judge scores, got {len(scores)}")
    drop = (len(scores) - 3) // 2
    middle = scores[drop : drop + 3]
    return round(sum(middle) * float(difficulty), 2)
