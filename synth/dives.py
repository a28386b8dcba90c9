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

from fineparser.spec import canonical_dive_number
from synth.finediving_facts import DIVES, SUB_ACTION_TYPES

PLATFORM = "10m"
SPRINGBOARD = "3m"
HEIGHTS = (PLATFORM, SPRINGBOARD)

# Dive numbers, how often each is dived at each height and its degree of difficulty, all from the
# real FineDiving annotations (synth/finediving_facts.py says how).  Dive numbers are canonical
# (fineparser.spec.canonical_dive_number: lower case, as the real annotations write them).
DIVE_TABLE: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {board: MappingProxyType({n: dd for n, (_, dd) in dives.items()}) for board, dives in DIVES.items()}
)
"""Height -> dive number -> degree of difficulty."""
DIVE_FREQUENCY: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {board: MappingProxyType({n: count for n, (count, _) in dives.items()}) for board, dives in DIVES.items()}
)
"""Height -> dive number -> clips of it in FineDiving; the world draws dive numbers in these proportions."""

DIRECTIONS = ("forward", "back", "reverse", "inward")
POSITIONS = MappingProxyType({"A": "straight", "B": "pike", "C": "tuck", "D": "free"})

# ----------------------------------------------------------------------------- step labels
# Per-frame step types with the ids and names of the real Sub_action_Types_Table.pkl, applied the
# way the real annotators did: take-off by group, then somersaults named by the dive's total count
# (free position written as pike, a half somersault as '0.5 Som.Pike'), twists by the dive's total
# count, then 'Entry'.  The come-out belongs to the somersault step, as in the real labels.  So in
# every clip the second distinct label starts the flight and the last distinct label is the entry
# (the two transitions the model learns).
STEP_TYPES: Mapping[int, str] = SUB_ACTION_TYPES
"""Step type id -> name (the real table; the world uses 33 of its 42 ids)."""
_ID_OF_TYPE = {name: i for i, name in SUB_ACTION_TYPES.items()}
TAKEOFF_LABELS = MappingProxyType(
    {
        "forward": _ID_OF_TYPE["Forward"],
        "back": _ID_OF_TYPE["Back"],
        "reverse": _ID_OF_TYPE["Reverse"],
        "inward": _ID_OF_TYPE["Inward"],
        "armstand forward": _ID_OF_TYPE["Arm.Forward"],
        "armstand back": _ID_OF_TYPE["Arm.Back"],
    }
)
ENTRY_LABEL = _ID_OF_TYPE["Entry"]
STEP_OF_TYPE: Mapping[int, int] = MappingProxyType(
    {
        i: 0 if i in TAKEOFF_LABELS.values() or name.startswith("Arm.") else (2 if i == ENTRY_LABEL else 1)
        for i, name in SUB_ACTION_TYPES.items()
        if name != "Background"
    }
)
"""Coarse step (index into fineparser.spec.STEP_NAMES) of every step type."""


def _count_name(halves: int, one: str, many: str) -> str:
    """'0.5 Twist', '1 Twist', '1.5 Twists', ... as the real table writes counts."""
    count = f"{halves / 2:g}"
    return f"{count} {one if halves <= 2 else many}"

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
        """Step type id of this dive's somersault phases (and come-out), e.g. '2.5 Soms.Pike'."""
        if self.half_somersaults == 1:
            return _ID_OF_TYPE["0.5 Som.Pike"]
        position = {"A": "Straight", "B": "Pike", "C": "Tuck", "D": "Pike"}[self.position]
        name = f"{_count_name(self.half_somersaults, 'Som', 'Soms')}.{position}"
        if name not in _ID_OF_TYPE:
            raise ValueError(f"dive {self.number}: no step type {name!r} in the real table")
        return _ID_OF_TYPE[name]

    @property
    def twist_label(self) -> int:
        """Step type id of this dive's twist phase, e.g. '1.5 Twists' (ValueError without twists)."""
        name = _count_name(self.half_twists, "Twist", "Twists")
        if self.half_twists == 0 or name not in _ID_OF_TYPE:
            raise ValueError(f"dive {self.number}: no twist step type {name!r}")
        return _ID_OF_TYPE[name]


def parse_dive_number(number: str) -> DiveInfo:
    """Decode a FINA dive number such as '107b', '5253B' or '6243d' (any case; DiveInfo.number is canonical)."""
    match = _DIVE_RE.match(canonical_dive_number(number).upper())
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
    return DiveInfo(canonical_dive_number(number), group, direction, armstand, half_soms, half_twists, position)


def difficulty(number: str, height: str) -> float:
    """Degree of difficulty of a dive number (any case) at a height ('10m' or '3m') from DIVE_TABLE."""
    number = canonical_dive_number(number)
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
