"""Articulated side-view diver renderer of the synthetic world (numpy + OpenCV only).

A dive is planned once (:func:`plan_dive`: timing, trajectory, rotation schedule, faults that the
quality factors call for) and then rendered at any list of times (:func:`render_frames`), so the
same plan gives the 25 fps dataset clip, a 50 fps broadcast or a slow-motion replay.

Geometry rule (learnability): downstream every frame is squashed to 112x200 and centre-cropped to
112x112, so only the central ~56% of the frame height survives.  The camera framing therefore
keeps board end, flight, entry and splash inside the central half of the frame height, and the
diver is drawn big and thick (limbs >= 5 px at 256 px frame height) so the 4x horizontal squash
leaves it visible.

Masks are exact: the diver is first drawn as part ids into a label image with aliased (LINE_8)
primitives, and the frame takes its diver colours from that label image, so the mask equals the
diver pixels.  Water (below the surface) and splash hide the diver and are removed from the mask.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from synth.dives import (
    ENTRY_LABEL,
    PLATFORM,
    DiveInfo,
    Quality,
)
from synth.finediving_facts import (
    CLIP_LENGTH_QUANTILES,
    ENTRY_END_QUANTILES,
    TAKEOFF_END_QUANTILES,
    TRANSITION_RANK_CORRELATION,
    from_quantiles,
)

BASE_HEIGHT = 256
"""Frame height the world's pixel constants are written for; other heights scale them."""

# Part ids of the label image.  1..15 are the diver (the mask), 240+ are things that hide it.
SKIN, SKIN_FAR, SUIT, STRIPE, HAIR = 1, 2, 3, 4, 5
DIVER_MAX_ID = 15
FOAM, SPRAY, SPRAY_DARK = 250, 251, 252

_SHIFT = 3  # sub-pixel bits for cv2 drawing: smooth motion without anti-aliasing
_ONE = 1 << _SHIFT

# Pose parameter vector (degrees unless said): hip flexion, knee flexion, shoulder angle (0 = arms
# along the body to the feet, 180 = overhead), elbow bend, leg scissor split, extra lift of the
# first leg (hurdle knee), foot flex (0 pointed .. 1 flat), opposite arm swing.
ALPHA, BETA, PSI, EPS, SPLIT, LIFT, FLEX, SWING = range(8)
_N_PARAMS = 8


def _params(alpha=0.0, beta=0.0, psi=0.0, eps=0.0, split=0.0, lift=0.0, flex=0.0, swing=0.0) -> np.ndarray:
    return np.array([alpha, beta, psi, eps, split, lift, flex, swing], dtype=np.float64)


def _smooth(x: float) -> float:
    """Smoothstep on [0, 1] (clipped): keyframe easing without velocity jumps."""
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def _lerp(a, b, w):
    return a + (b - a) * w


def _track(keys: Sequence[tuple[float, np.ndarray]], x: float) -> np.ndarray:
    """Eased interpolation of parameter keyframes [(x, params)] sorted by x."""
    if x <= keys[0][0]:
        return keys[0][1]
    for (x0, p0), (x1, p1) in zip(keys[:-1], keys[1:], strict=True):
        if x <= x1:
            return _lerp(p0, p1, _smooth((x - x0) / max(x1 - x0, 1e-9)))
    return keys[-1][1]


# ----------------------------------------------------------------------------- world geometry


@dataclass(frozen=True)
class Geometry:
    """Camera framing of one dive, in frame pixels (frame coordinates at the middle of the pan)."""

    height: int
    width: int
    scale: float  # height / 256
    board: str  # '10m' platform or '3m' springboard
    board_top: float  # y of the board surface
    board_end: float  # x of the board's water-side end
    water: float  # y of the water surface
    pan_margin: int  # extra background columns on each side for the camera pan
    pan: float  # pan amplitude in pixels (camera moves right, following the diver)


def frame_width(height: int) -> int:
    """Width of a 16:9 frame of this height (455 for 256)."""
    return int(round(height * 16 / 9))


def make_geometry(height: int, board: str, rng: np.random.Generator, width: int | None = None) -> Geometry:
    """Sample the camera framing of a dive: board and water inside the central band, slight pan."""
    k = height / BASE_HEIGHT
    width = frame_width(height) if width is None else width
    # The whole path must stay inside rows 0.25H..0.75H (the centre crop keeps 0.22H..0.78H); the
    # constants below were measured over many dives (tests check every mask).
    jitter = rng.uniform(-2.0, 2.0) * k
    water = 184.0 * k + jitter
    board_top = (140.0 if board == PLATFORM else 146.0) * k + jitter
    board_end = width * rng.uniform(0.36, 0.42)
    margin = int(math.ceil(14 * k))
    return Geometry(height, width, k, board, board_top, board_end, water, margin, rng.uniform(0.0, margin))


@dataclass(frozen=True)
class Body:
    """Segment lengths and thicknesses of the diver in pixels."""

    torso: float
    neck: float
    head_along: float  # head half-length along the body axis
    head_across: float
    thigh: float
    shin: float
    foot: float
    upper_arm: float
    forearm: float
    hip_half_width: float
    shoulder_half_width: float
    torso_thick: int
    pelvis_radius: float
    thigh_thick: int
    shin_thick: int
    upper_arm_thick: int
    forearm_thick: int

    @staticmethod
    def sample(scale: float, rng: np.random.Generator) -> Body:
        """A diver's build, about 47 px tall standing at 256 px frame height."""
        s = scale * rng.uniform(0.95, 1.03)
        t = scale * rng.uniform(0.95, 1.08)  # thickness varies separately (build)

        def thick(v: float) -> int:
            return max(2, int(round(v * t)))

        return Body(
            torso=13.0 * s,
            neck=2.0 * s,
            head_along=6.2 * s,
            head_across=5.0 * s * t / scale,
            thigh=11.0 * s,
            shin=10.0 * s,
            foot=4.0 * s,
            upper_arm=8.0 * s,
            forearm=8.0 * s,
            hip_half_width=2.5 * s,
            shoulder_half_width=4.0 * s,
            torso_thick=thick(12.0),
            pelvis_radius=6.5 * s * t / scale,
            thigh_thick=thick(10.0),
            shin_thick=thick(8.0),
            upper_arm_thick=thick(6.0),
            forearm_thick=thick(5.0),
        )


# ----------------------------------------------------------------------------- dive plan


@dataclass(frozen=True)
class FlightPhase:
    """A flight sub-step over the normalised flight time [start, end)."""

    start: float
    end: float
    kind: str  # 'somersault', 'twist' or 'come-out'
    label: int


@dataclass(frozen=True)
class DivePlan:
    """Everything needed to render one dive at any time; times are in clip frames (25 fps)."""

    info: DiveInfo
    board: str
    quality: Quality
    geometry: Geometry
    body: Body
    num_frames: int
    takeoff_end: int  # last frame of the take-off step
    entry_start: int  # first frame of the entry step (hands reach the water)
    phases: tuple[FlightPhase, ...]
    takeoff_style: str  # 'standing', 'approach' or 'armstand'
    facing: int  # +1: front towards the water (+x) when upright, -1: towards the board
    rot_sign: int  # +1: head moves towards +x (clockwise on screen)
    twist_sign: int
    lean: float  # body lean at take-off, degrees
    entry_error: float  # signed over-rotation at entry, degrees
    crouch: float  # take-off crouch depth 0..1
    fault_alpha: float  # hip pike in straight phases
    fault_beta: float  # knee bend in straight phases
    fault_split: float  # leg scissor in straight phases
    position_params: tuple[float, ...]  # pose parameters while somersaulting in position
    launch_hip: tuple[float, float]
    entry_hip: tuple[float, float]
    rise: float  # apex height of the hips above the launch point
    entry_speed: float  # pixels per frame along the body axis after the hands enter
    rotation_cdf: tuple[float, ...]  # cumulative rotation share on an even grid over the flight
    splash_height: float
    splash_width: float
    droplets: tuple[tuple[float, float, float], ...]  # (dx, height share, radius) of spray drops
    entry_x: float  # x where the hands enter the water

    @property
    def flight_frames(self) -> int:
        """Frames strictly between take-off end and entry start."""
        return self.entry_start - self.takeoff_end - 1

    def phase_boundaries(self) -> list[dict]:
        """Flight phases with their first/last frame (for synth.json); -1 when a phase got no frame."""
        a, e = self.takeoff_end, self.entry_start
        owner = [_phase_index(self, (t - a) / (e - a)) for t in range(a + 1, e)]
        out = []
        for i, ph in enumerate(self.phases):
            frames = [a + 1 + j for j, o in enumerate(owner) if o == i]
            out.append(
                {
                    "kind": ph.kind,
                    "label": ph.label,
                    "first_frame": frames[0] if frames else -1,
                    "last_frame": frames[-1] if frames else -1,
                }
            )
        return out


_ROT_GRID = 257
_MAX_DROPLETS = 17
_PHASE_RAMP = 0.07  # flight share over which the body changes from one phase shape to the next


def _position_params(info: DiveInfo, tightness: float, fault_beta: float) -> np.ndarray:
    """Pose while somersaulting in the dive's position; tightness 1 is a closed pike/tuck."""
    q = tightness
    if info.position == "A":
        # Straight somersaults: a loose diver pikes at the hips.
        return _params(alpha=(1.0 - q) * 38.0, beta=fault_beta, psi=12.0, eps=0.0)
    if info.position == "B":
        alpha = _lerp(100.0, 162.0, q)
        return _params(alpha=alpha, beta=fault_beta * 0.5, psi=alpha - 55.0, eps=5.0)
    if info.position == "C":
        return _params(alpha=_lerp(88.0, 142.0, q), beta=_lerp(75.0, 150.0, q), psi=30.0, eps=25.0)
    # Free: a loose pike while somersaulting, straight while twisting.
    alpha = _lerp(75.0, 120.0, q)
    return _params(alpha=alpha, beta=15.0, psi=alpha - 60.0, eps=15.0)


def _flight_phases(info: DiveInfo, rng: np.random.Generator) -> tuple[FlightPhase, ...]:
    """Sub-steps of the flight: somersaults in position, twists in a straight body, come-out.

    The come-out carries the somersault step type, as the real annotations label it.
    """
    som = info.somersault_label
    open_at = rng.uniform(0.76, 0.84)
    if info.half_twists == 0:
        return (
            FlightPhase(0.0, open_at, "somersault", som),
            FlightPhase(open_at, 1.0, "come-out", som),
        )
    twist = info.twist_label
    twist_len = min(0.42, 0.10 + 0.065 * info.half_twists)
    if info.direction == "forward" and not info.armstand:
        # Forward twisting somersaults twist late, after the somersaults (e.g. 5154b).
        start = open_at - twist_len
        return (
            FlightPhase(0.0, start, "somersault", som),
            FlightPhase(start, open_at, "twist", twist),
            FlightPhase(open_at, 1.0, "come-out", som),
        )
    # Back/reverse/inward and armstand twisters twist early, then somersault in position.
    first = rng.uniform(0.06, 0.1)
    return (
        FlightPhase(0.0, first, "somersault", som),
        FlightPhase(first, first + twist_len, "twist", twist),
        FlightPhase(first + twist_len, open_at, "somersault", som),
        FlightPhase(open_at, 1.0, "come-out", som),
    )


MIN_TAKEOFF_FRAMES = 3
MIN_FLIGHT_FRAMES = 8  # the shortest flight step of the real annotations
_TIMING_TRIES = 1000


def sample_clip_length(rng: np.random.Generator) -> int:
    """Frames of a dive clip, drawn from the real clip lengths (63..273, 101 the most common)."""
    return int(round(float(from_quantiles(CLIP_LENGTH_QUANTILES, rng.random()))))


def sample_step_timing(num_frames: int, rng: np.random.Generator) -> tuple[int, int]:
    """(takeoff_end, entry_start) of a clip, from the real annotations' transition positions.

    The last take-off frame and the last frame before the entry are drawn as fractions of the clip
    from their real distributions, correlated as in the real data (normal-score correlation
    0.86).  Draws are kept only when the take-off has >= 3 frames, the flight >= 8, and, after
    96-frame sampling with any training end shift (-3..0), the transitions fall in 0..47 and
    48..95 where the paper's TAP looks for them (93 % of real clips do; the rest are redrawn).
    One value is taken from ``rng`` whatever the number of redraws, so later draws do not move.
    """
    T = int(num_frames)
    if T < 40:
        raise ValueError("a dive needs at least 40 frames")
    own = np.random.default_rng(int(rng.integers(2**63)))
    rho = TRANSITION_RANK_CORRELATION
    for _ in range(_TIMING_TRIES):
        z1, z2 = own.standard_normal(2)
        z2 = rho * z1 + math.sqrt(1.0 - rho * rho) * z2
        u1, u2 = (0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) for z in (z1, z2))
        takeoff_end = int(round(float(from_quantiles(TAKEOFF_END_QUANTILES, u1)) * (T - 1)))
        entry_start = int(round(float(from_quantiles(ENTRY_END_QUANTILES, u2)) * (T - 1))) + 1
        if takeoff_end + 1 < MIN_TAKEOFF_FRAMES or entry_start - takeoff_end - 1 < MIN_FLIGHT_FRAMES:
            continue
        if entry_start >= T or not _reachable(T, takeoff_end, entry_start):
            continue
        return takeoff_end, entry_start
    raise RuntimeError(f"no step timing for a {T}-frame clip satisfies the constraints")


def _reachable(num_frames: int, takeoff_end: int, entry_start: int) -> bool:
    """Whether the sampled transitions land in 0..47 and 48..95 for every training end shift."""
    for shift in range(-3, 1):
        idx = np.linspace(0, num_frames - 1 + shift, 96).astype(np.int64)
        first_flight = np.flatnonzero(idx > takeoff_end)
        first_entry = np.flatnonzero(idx >= entry_start)
        if not first_flight.size or not first_entry.size:
            return False
        if not (first_flight[0] - 1 <= 47 and first_entry[0] - 1 >= 48):
            return False
    return True


def _orientation(info: DiveInfo) -> tuple[int, int]:
    """(facing, rotation sign) of a dive family in the side view (board on the left)."""
    if info.armstand:
        # Handstand at the board end; the legs fall over the water (theta increasing from 180).
        return (1 if info.direction == "back" else -1), 1
    facing = 1 if info.direction in ("forward", "reverse") else -1
    forward_rotating = info.direction in ("forward", "inward")
    return facing, (facing if forward_rotating else -facing)


def plan_dive(
    info: DiveInfo,
    board: str,
    quality: Quality,
    rng: np.random.Generator,
    geometry: Geometry,
    num_frames: int | None = None,
) -> DivePlan:
    """Plan a dive: timing, trajectory and the visible faults that its quality factors call for."""
    k = geometry.scale
    body = Body.sample(k, rng)
    T = int(num_frames) if num_frames is not None else sample_clip_length(rng)
    takeoff_end, entry_start = sample_step_timing(T, rng)
    facing, rot_sign = _orientation(info)
    style = takeoff_style(info, board)
    q = quality
    fault_alpha = (1.0 - q.body_line) * 28.0
    fault_beta = (1.0 - q.body_line) * 42.0
    fault_split = (1.0 - q.body_line) * 40.0
    position = _position_params(info, q.tightness, fault_beta)
    phases = _flight_phases(info, rng)
    lean = rng.uniform(6.0, 12.0)
    entry_error = float(rng.choice([-1.0, 1.0])) * (1.0 - q.entry_angle) * 40.0
    rise_max = (14.0 if board == PLATFORM else 21.0) * k
    rise = _lerp(3.0 * k, rise_max, q.takeoff_height)
    ideal = 30.0 * k
    if rng.random() < 0.5:
        entry_dx = ideal - (1.0 - q.takeoff_distance) * 22.0 * k  # too close to the board
    else:
        entry_dx = ideal + (1.0 - q.takeoff_distance) * 45.0 * k  # travelling too far out
    entry_x = geometry.board_end + entry_dx
    # A poor entry throws a spray column up to ~3/8 of the frame height: the most visible fault, as on TV.
    splash_h = k * (5.0 + 90.0 * (1.0 - q.splash))
    splash_w = k * (6.0 + 60.0 * (1.0 - q.splash))
    # Always draw the same number of random values so quality never shifts later random choices
    # (a forced quality must leave the scene and timing of a dive unchanged).
    all_drops = [
        (float(rng.uniform(-1.0, 1.0)), float(rng.uniform(0.25, 1.0)), float(rng.uniform(1.0, 2.4)))
        for _ in range(_MAX_DROPLETS)
    ]
    droplets = tuple(all_drops[: 3 + int(round((_MAX_DROPLETS - 3) * (1.0 - q.splash)))])
    # Rotation speed share per phase: fast when closed in position, slower twisting, slow opening.
    weights = {"somersault": 1.0, "twist": 0.55, "come-out": 0.3}
    grid = np.linspace(0.0, 1.0, _ROT_GRID)
    rate = np.empty_like(grid)
    for ph in phases:
        rate[(grid >= ph.start) & (grid <= ph.end)] = weights[ph.kind]
    rate *= 0.4 + 0.6 * np.clip(grid / 0.08, 0.0, 1.0)  # spin builds up as the body closes
    cdf = np.concatenate([[0.0], np.cumsum((rate[1:] + rate[:-1]) * 0.5)])
    cdf /= cdf[-1]
    plan = DivePlan(
        info=info,
        board=board,
        quality=quality,
        geometry=geometry,
        body=body,
        num_frames=T,
        takeoff_end=takeoff_end,
        entry_start=entry_start,
        phases=phases,
        takeoff_style=style,
        facing=facing,
        rot_sign=rot_sign,
        twist_sign=int(rng.choice([-1, 1])),
        lean=lean,
        entry_error=entry_error,
        crouch=0.55 + 0.45 * q.takeoff_height,
        fault_alpha=fault_alpha,
        fault_beta=fault_beta,
        fault_split=fault_split,
        position_params=tuple(float(v) for v in position),
        launch_hip=(0.0, 0.0),
        entry_hip=(0.0, 0.0),
        rise=rise,
        entry_speed=0.0,
        rotation_cdf=tuple(float(v) for v in cdf),
        splash_height=splash_h,
        splash_width=splash_w,
        droplets=droplets,
        entry_x=entry_x,
    )
    # The launch point follows from the take-off pose (feet or hands on the board); the entry
    # point from the entry pose (hands on the water surface at entry_x).
    launch = _takeoff_root(plan, 1.0)[0]
    ent_pose = _flight_shape(plan, 1.0)
    skel = _skeleton(ent_pose[1], ent_pose[2], plan.facing, ent_pose[0], body)
    hand = max((skel["hand0"], skel["hand1"]), key=lambda p: p[1])
    entry_hip = (entry_x - hand[0], geometry.water - hand[1])
    drop = max(entry_hip[1] - launch[1], 1.0)
    root_b = (math.sqrt(rise) + math.sqrt(rise + drop)) ** 2
    root_a = 2.0 * math.sqrt(root_b * rise)
    # Keep the vertical speed the flight ends with (per frame) for the way into the water.
    speed = (2.0 * root_b - root_a) / max(entry_start - takeoff_end, 1)
    return _replace(plan, launch_hip=launch, entry_hip=entry_hip, entry_speed=max(speed, 2.5 * k))


def _replace(plan: DivePlan, **changes) -> DivePlan:
    return dataclasses.replace(plan, **changes)


# ----------------------------------------------------------------------------- poses


def _straight(plan: DivePlan, psi: float, eps: float = 0.0) -> np.ndarray:
    """A straight body carrying this dive's body-line faults."""
    return _params(alpha=plan.fault_alpha, beta=plan.fault_beta, psi=psi, eps=eps, split=plan.fault_split)


STANDING_STILL = 0.35
"""Share of a standing take-off (from the dive's first frame) during which the diver holds the waiting pose."""


def takeoff_style(info: DiveInfo, board: str) -> str:
    """'armstand' (group 6), 'approach' (forward and reverse dives off a springboard: a walk and a hurdle) or
    'standing' (the rest: the diver stands still for the first STANDING_STILL of the take-off, then moves)."""
    if info.armstand:
        return "armstand"
    if board != PLATFORM and info.direction in ("forward", "reverse"):
        return "approach"
    return "standing"


def _takeoff_keys(plan: DivePlan) -> list[tuple[float, np.ndarray]]:
    d = plan.crouch
    launch = _straight(plan, psi=180.0)
    stand = _params(flex=1.0, eps=10.0)
    crouch = _params(alpha=48.0 * d, beta=85.0 * d, psi=-35.0, eps=10.0, flex=1.0)
    if plan.takeoff_style == "armstand":
        press = _params(alpha=35.0, psi=180.0, split=70.0)
        hold = _params(
            alpha=plan.fault_alpha * 0.5, beta=plan.fault_beta * 0.5, psi=180.0, split=plan.fault_split * 0.5
        )
        return [(0.0, press), (0.3, hold), (0.85, hold), (1.0, launch)]
    if plan.takeoff_style == "approach":
        hurdle = _params(alpha=10.0, psi=180.0, lift=85.0, flex=0.3)
        return [
            (0.0, stand),
            (0.45, stand),
            (0.56, hurdle),
            (0.64, _params(psi=150.0, flex=0.5)),
            (0.8, crouch),
            (0.93, _straight(plan, psi=170.0)),
            (1.0, launch),
        ]
    arms_up = _params(psi=180.0, flex=1.0)
    return [
        (0.0, stand),
        (STANDING_STILL, stand),
        (0.5, arms_up),
        (0.7, crouch),
        (0.9, _straight(plan, psi=170.0)),
        (1.0, launch),
    ]


def _takeoff_root(plan: DivePlan, tau: float) -> tuple[tuple[float, float], np.ndarray, float]:
    """(hip position, pose params, theta) during the take-off, tau in [0, 1]."""
    g, k = plan.geometry, plan.geometry.scale
    params = _track(_takeoff_keys(plan), tau)
    if plan.takeoff_style == "armstand":
        sway = 2.0 * math.sin(tau * 9.0)
        theta = 180.0 + sway * (1.0 - _smooth((tau - 0.8) / 0.1)) + plan.lean * _smooth((tau - 0.85) / 0.15)
        lift = 3.0 * k * _smooth((tau - 0.93) / 0.07)
        skel = _skeleton(theta, 0.0, plan.facing, params, plan.body)
        hands = ((skel["hand0"][0] + skel["hand1"][0]) / 2, max(skel["hand0"][1], skel["hand1"][1]))
        anchor = (g.board_end - 2.0 * k, g.board_top - lift)
        return (anchor[0] - hands[0], anchor[1] - hands[1]), params, theta
    theta = plan.rot_sign * plan.lean * _smooth((tau - 0.7) / 0.3)
    foot_x = g.board_end - 4.0 * k
    lift = 3.0 * k * _smooth((tau - 0.9) / 0.1)
    if plan.takeoff_style == "approach":
        if tau < 0.45:  # walk to the end of the board
            walk = tau / 0.45
            foot_x = g.board_end - _lerp(80.0, 28.0, walk) * k
            params = params.copy()
            params[SPLIT] = 34.0 * math.sin(walk * math.pi * 5.0)
            params[SWING] = -params[SPLIT] * 1.2
        elif tau < 0.64:  # hurdle onto the board end
            h = (tau - 0.45) / 0.19
            foot_x = g.board_end - _lerp(28.0, 4.0, h) * k
            lift = 16.0 * k * math.sin(math.pi * h)
        elif tau < 0.86:  # the board bends under the landing
            lift = -3.0 * k * math.sin(math.pi * (tau - 0.64) / 0.22)
    skel = _skeleton(theta, 0.0, plan.facing, params, plan.body)
    ankle = ((skel["ankle0"][0] + skel["ankle1"][0]) / 2, max(skel["ankle0"][1], skel["ankle1"][1]))
    foot_pad = plan.body.shin_thick / 2.0
    return (foot_x - ankle[0], g.board_top - foot_pad - lift - ankle[1]), params, theta


def _phase_index(plan: DivePlan, s: float) -> int:
    for i, ph in enumerate(plan.phases):
        if s < ph.end:
            return i
    return len(plan.phases) - 1


def _phase_target(plan: DivePlan, index: int) -> np.ndarray:
    kind = plan.phases[index].kind
    if kind == "somersault":
        return np.array(plan.position_params)
    if kind == "twist":
        return _straight(plan, psi=5.0, eps=115.0)
    return _straight(plan, psi=180.0)


def _flight_shape(plan: DivePlan, s: float) -> tuple[np.ndarray, float, float]:
    """(pose params, theta, twist angle) at normalised flight time s."""
    i = _phase_index(plan, s)
    ph = plan.phases[i]
    prev = _straight(plan, psi=180.0) if i == 0 else _phase_target(plan, i - 1)
    params = _lerp(prev, _phase_target(plan, i), _smooth((s - ph.start) / _PHASE_RAMP))
    cdf = plan.rotation_cdf
    pos = min(max(s, 0.0), 1.0) * (len(cdf) - 1)
    j = min(int(pos), len(cdf) - 2)
    share = cdf[j] + (cdf[j + 1] - cdf[j]) * (pos - j)
    info = plan.info
    start = (180.0 if info.armstand else 0.0) + plan.rot_sign * plan.lean
    total = info.half_somersaults * 180.0 + plan.entry_error - plan.lean
    theta = start + plan.rot_sign * total * share
    twist = 0.0
    for ph in plan.phases:
        if ph.kind == "twist":
            twist = plan.twist_sign * info.half_twists * 180.0 * _smooth((s - ph.start) / (ph.end - ph.start))
    return params, theta, twist


@dataclass(frozen=True)
class Pose:
    """Root and joint parameters of the diver at one instant."""

    hip: tuple[float, float]
    theta: float  # body axis angle, degrees clockwise from vertical-up
    twist: float  # rotation about the long axis, degrees
    params: np.ndarray
    underwater_from: float  # water surface y: nothing of the diver is visible below it


def pose_at(plan: DivePlan, t: float) -> Pose:
    """The diver's pose at clip time t (frames, may be fractional)."""
    a, e = plan.takeoff_end, plan.entry_start
    water = plan.geometry.water
    if t <= a:
        hip, params, theta = _takeoff_root(plan, t / max(a, 1e-9))
        return Pose(hip, theta, 0.0, params, water)
    if t < e:
        s = (t - a) / (e - a)
        params, theta, twist = _flight_shape(plan, s)
        (x0, y0), (x1, y1) = plan.launch_hip, plan.entry_hip
        drop = y1 - y0
        root_b = (math.sqrt(plan.rise) + math.sqrt(max(plan.rise + drop, 0.0))) ** 2
        root_a = 2.0 * math.sqrt(root_b * plan.rise)
        return Pose((x0 + (x1 - x0) * s, y0 - root_a * s + root_b * s * s), theta, twist, params, water)
    params, theta, twist = _flight_shape(plan, 1.0)
    th = math.radians(theta)
    d = (t - e) * plan.entry_speed
    x1, y1 = plan.entry_hip
    # Head first along the body axis (which points down at entry), into the hole the hands made.
    return Pose((x1 + math.sin(th) * d, y1 - math.cos(th) * d), theta, twist, params, water)


def _skeleton(theta: float, twist: float, facing: int, p: np.ndarray, body: Body) -> dict:
    """Joint positions relative to the hip centre (pixels, y down)."""
    th = math.radians(theta)
    ux, uy = math.sin(th), -math.cos(th)
    nx, ny = math.cos(th) * facing, math.sin(th) * facing
    tw = math.radians(twist)
    ct, st = math.cos(tw), math.sin(tw)

    def proj(along: float, front: float, lateral: float) -> tuple[float, float]:
        m = front * ct - lateral * st
        return along * ux + m * nx, along * uy + m * ny

    def limb_dir(angle_deg: float) -> tuple[float, float]:
        r = math.radians(angle_deg)
        return proj(-math.cos(r), math.sin(r), 0.0)

    out: dict = {"u": (ux, uy), "n": (nx, ny), "ct": ct, "st": st}
    sx, sy = ux * body.torso, uy * body.torso
    out["shoulder"] = (sx, sy)
    hd = body.torso + body.neck + body.head_along
    out["head"] = (ux * hd, uy * hd)
    for j, side in ((0, 1.0), (1, -1.0)):
        hx, hy = proj(0.0, 0.0, side * body.hip_half_width)
        a = p[ALPHA] + side * p[SPLIT] / 2.0 + (p[LIFT] if j == 0 else 0.0)
        b = p[BETA] + (p[LIFT] * 1.1 if j == 0 else 0.0)
        dx, dy = limb_dir(a)
        kx, ky = hx + dx * body.thigh, hy + dy * body.thigh
        dx, dy = limb_dir(a - b)
        ax, ay = kx + dx * body.shin, ky + dy * body.shin
        dx, dy = limb_dir(a - b + 90.0 * p[FLEX])
        out[f"hip{j}"], out[f"knee{j}"], out[f"ankle{j}"] = (hx, hy), (kx, ky), (ax, ay)
        out[f"toe{j}"] = (ax + dx * body.foot, ay + dy * body.foot)
        ox, oy = proj(0.0, 0.0, side * body.shoulder_half_width)
        ox, oy = sx + ox, sy + oy
        psi = p[PSI] + side * p[SWING]
        dx, dy = limb_dir(psi)
        ex, ey = ox + dx * body.upper_arm, oy + dy * body.upper_arm
        dx, dy = limb_dir(psi + p[EPS])
        out[f"shoulder{j}"], out[f"elbow{j}"] = (ox, oy), (ex, ey)
        out[f"hand{j}"] = (ex + dx * body.forearm, ey + dy * body.forearm)
    return out


# ----------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Scene:
    """Pre-rendered background (wider than the frame, for the pan) and the colour of every part id."""

    geometry: Geometry
    background: np.ndarray  # [H, W + 2 * margin, 3] uint8 RGB, read-only
    palette: np.ndarray  # [256, 3] uint8 RGB, read-only
    plain: bool
    style: str


PLAIN_BACKGROUND = (0, 150, 0)
"""Uniform background colour of the plain scene (no diver colour can equal it)."""

_SUITS = (
    (200, 30, 40),
    (20, 40, 160),
    (230, 200, 30),
    (20, 20, 25),
    (150, 20, 150),
    (240, 110, 20),
    (20, 150, 190),
    (250, 250, 250),
)
_STRIPES = ((255, 255, 255), (250, 220, 0), (10, 10, 10), (255, 90, 160))


def _gradient(h: int, w: int, top: Sequence[float], bottom: Sequence[float]) -> np.ndarray:
    col = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    grad = np.asarray(top, np.float32)[None, :] * (1.0 - col) + np.asarray(bottom, np.float32)[None, :] * col
    return np.repeat(grad[:, None, :], w, axis=1)


def _draw_structure(img: np.ndarray, g: Geometry, rng: np.random.Generator, ox: int) -> None:
    """Platform tower or springboard stand, in background coordinates (ox = pan margin)."""
    k = g.scale
    end = int(round(g.board_end + ox))
    top = int(round(g.board_top))
    water = int(round(g.water))
    if g.board == PLATFORM:
        concrete = tuple(int(c) for c in rng.integers(150, 205, size=3))
        edge = tuple(int(c * 0.75) for c in concrete)
        cv2.rectangle(img, (0, top), (end, top + int(9 * k)), concrete, -1)
        cv2.rectangle(img, (end - int(3 * k), top), (end, top + int(9 * k)), edge, -1)
        cv2.rectangle(img, (end - int(48 * k), top + int(9 * k)), (end - int(34 * k), water), edge, -1)
        cv2.line(
            img, (0, top - int(10 * k)), (end - int(22 * k), top - int(10 * k)), (90, 90, 90), max(1, int(k))
        )
    else:
        plank = (236, 236, 226) if rng.random() < 0.6 else (40, 90, 190)
        stand = tuple(int(c) for c in rng.integers(70, 140, size=3))
        cv2.rectangle(img, (0, top), (end, top + max(2, int(4 * k))), plank, -1)
        pts = np.array(
            [
                [end - int(46 * k), top + int(4 * k)],
                [end - int(54 * k), top + int(14 * k)],
                [end - int(38 * k), top + int(14 * k)],
            ],
            np.int32,
        )
        cv2.fillPoly(img, [pts], stand)
        cv2.rectangle(img, (end - int(74 * k), top + int(14 * k)), (end - int(30 * k), water), stand, -1)


def make_scene(geometry: Geometry, rng: np.random.Generator, plain: bool = False,
               venue_rng: np.random.Generator | None = None) -> Scene:
    """Render a dive's background once: hall/sky, stands, pool, board, lighting and sensor noise.

    The diver's colours come from `rng`; the venue (background, lighting) from `venue_rng` when given,
    so that all dives of one competition share a venue, as in a real broadcast.
    """
    g = geometry
    diver_rng = rng
    rng = venue_rng if venue_rng is not None else rng
    k = g.scale
    h, w = g.height, g.width + 2 * g.pan_margin
    palette = np.zeros((256, 3), np.uint8)
    skin = np.array([diver_rng.uniform(170, 250), diver_rng.uniform(120, 200), diver_rng.uniform(90, 160)])
    suit = np.array(_SUITS[int(diver_rng.integers(len(_SUITS)))], np.float64)
    stripe = np.array(_STRIPES[int(diver_rng.integers(len(_STRIPES)))], np.float64)
    if np.abs(stripe - suit).sum() < 120:
        stripe = 255.0 - suit
    hair = np.array([diver_rng.uniform(10, 90), diver_rng.uniform(5, 60), diver_rng.uniform(0, 40)])
    if plain:
        bg = np.empty((h, w, 3), np.uint8)
        bg[:] = PLAIN_BACKGROUND
        gain = np.ones(3)
        style = "plain"
    else:
        style = ("indoor", "outdoor", "arena")[int(rng.integers(3))]
        water_y = int(round(g.water))
        if style == "outdoor":
            sky_top = rng.uniform([60, 110, 190], [110, 160, 240])
            img = _gradient(h, w, sky_top, sky_top + rng.uniform(40, 80, size=3))
            hills = [(0, int(0.40 * h))]
            for x in range(0, w + 40, 40):
                hills.append((x, int(rng.uniform(0.36, 0.46) * h)))
            hills += [(w, water_y), (0, water_y)]
            cv2.fillPoly(
                img,
                [np.array(hills, np.int32)],
                tuple(float(c) for c in rng.uniform([40, 90, 40], [90, 140, 90])),
            )
        else:
            dark = style == "arena"
            top = rng.uniform(10, 50, size=3) if dark else rng.uniform(90, 170, size=3)
            img = _gradient(h, w, top, top * rng.uniform(0.6, 1.2))
            # Stands: a coarse grid of random colours (the crowd), blended into the wall.
            rows, cols = max(4, int(12 * k)), max(8, int(w / (6 * k)))
            crowd = rng.uniform(20, 235, size=(rows, cols, 3)).astype(np.float32)
            y0, y1 = int(0.04 * h), int(rng.uniform(0.30, 0.40) * h)
            crowd = cv2.resize(crowd, (w, y1 - y0), interpolation=cv2.INTER_LINEAR)
            mix = rng.uniform(0.15, 0.35)
            img[y0:y1] = img[y0:y1] * (1 - mix) + crowd * mix
            wall = rng.uniform(60, 200, size=3)
            img[y1 : y1 + int(5 * k)] = wall * 0.6
            if dark:
                for _ in range(3):  # spotlights
                    cx, cy, r = rng.uniform(0, w), rng.uniform(0, 0.3 * h), rng.uniform(30, 80) * k
                    yy, xx = np.mgrid[0:h, 0:w]
                    img += (70.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))[..., None]
        water_col = rng.uniform([20, 90, 130], [60, 160, 200])
        img[water_y:] = _gradient(h - water_y, w, water_col * 1.15, water_col * 0.7)
        for _ in range(int(40 * k)):  # ripples
            y = int(rng.uniform(water_y + 2, h))
            x = int(rng.uniform(0, w))
            shade = water_col * rng.uniform(0.8, 1.3)
            cv2.line(img, (x, y), (x + int(rng.uniform(6, 30) * k), y), tuple(float(c) for c in shade), 1)
        cv2.line(
            img,
            (0, water_y),
            (w, water_y),
            tuple(float(min(255, c * 1.5)) for c in water_col),
            max(1, int(k)),
        )
        _draw_structure(img, g, rng, g.pan_margin)
        gain = rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, size=3)  # exposure and colour cast
        # Sensor/texture noise at half resolution: it varies the pictures without making every JPEG
        # pay for per-pixel noise.
        noise = rng.normal(0.0, rng.uniform(1.0, 2.5), size=((h + 1) // 2, (w + 1) // 2, 3)).astype(
            np.float32
        )
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        img = img * gain + noise
        bg = np.clip(img, 0, 255).astype(np.uint8)
    palette[SKIN] = np.clip(skin * gain, 0, 255)
    palette[SKIN_FAR] = np.clip(skin * gain * 0.72, 0, 255)
    palette[SUIT] = np.clip(suit * gain, 0, 255)
    palette[STRIPE] = np.clip(stripe * gain, 0, 255)
    palette[HAIR] = np.clip(hair * gain, 0, 255)
    palette[FOAM] = np.clip(np.array([205, 228, 238]) * gain, 0, 255)
    palette[SPRAY] = np.clip(np.array([240, 248, 252]) * gain, 0, 255)
    palette[SPRAY_DARK] = np.clip(np.array([185, 215, 230]) * gain, 0, 255)
    if plain:
        for pid in range(1, DIVER_MAX_ID + 1):
            if tuple(palette[pid]) == PLAIN_BACKGROUND:
                palette[pid, 0] = 1  # a diver pixel must differ from the plain background
    bg.setflags(write=False)
    palette.setflags(write=False)
    return Scene(g, bg, palette, plain, style)


# ----------------------------------------------------------------------------- drawing


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _draw_diver(label: np.ndarray, pose: Pose, plan: DivePlan, ox: float) -> tuple[int, int, int, int]:
    """Draw the diver's part ids into the label image; returns its bounding box (x0, y0, x1, y1)."""
    body = plan.body
    sk = _skeleton(pose.theta, pose.twist, plan.facing, pose.params, body)
    hx, hy = pose.hip[0] - ox, pose.hip[1]

    def P(name: str) -> tuple[int, int]:
        x, y = sk[name]
        return _pt(hx + x, hy + y)

    ct, st = sk["ct"], sk["st"]
    near = 0 if ct >= 0 else 1  # the first leg/arm is on the camera side until a half twist
    far = 1 - near
    line = cv2.LINE_8

    def limb(j: int, part: int, a: str, b: str, c: str, t1: int, t2: int) -> None:
        cv2.line(label, P(f"{a}{j}"), P(f"{b}{j}"), part, t1, line, _SHIFT)
        cv2.line(label, P(f"{b}{j}"), P(f"{c}{j}"), part, t2, line, _SHIFT)

    limb(far, SKIN_FAR, "shoulder", "elbow", "hand", body.upper_arm_thick, body.forearm_thick)
    limb(far, SKIN_FAR, "hip", "knee", "ankle", body.thigh_thick, body.shin_thick)
    cv2.line(label, P(f"ankle{far}"), P(f"toe{far}"), SKIN_FAR, max(2, body.shin_thick - 3), line, _SHIFT)
    # Seen from the front or back (mid-twist) the torso looks wider than from the side.
    torso_t = int(round(body.torso_thick * (1.0 + 0.35 * abs(st))))
    hip = _pt(hx, hy)
    cv2.line(label, hip, P("shoulder"), SUIT, torso_t, line, _SHIFT)
    limb(near, SKIN, "hip", "knee", "ankle", body.thigh_thick, body.shin_thick)
    cv2.line(label, P(f"ankle{near}"), P(f"toe{near}"), SKIN, max(2, body.shin_thick - 3), line, _SHIFT)
    cv2.circle(label, hip, int(round(body.pelvis_radius * _ONE)), SUIT, -1, line, _SHIFT)
    if st > -0.3:
        # A stripe down the front of the suit: it swings across the body and vanishes as the diver
        # twists, which makes twists visible in a side view.
        nx, ny = sk["n"]
        off = ct * (torso_t / 2.0 - 2.0)
        sx, sy = sk["shoulder"]
        stripe_t = max(2, torso_t // 4)
        cv2.line(
            label,
            _pt(hx + nx * off, hy + ny * off),
            _pt(hx + sx * 0.85 + nx * off, hy + sy * 0.85 + ny * off),
            STRIPE,
            stripe_t,
            line,
            _SHIFT,
        )
    ux, uy = sk["u"]
    angle = math.degrees(math.atan2(uy, ux))
    head_x, head_y = sk["head"]
    axes = (int(round(body.head_along * _ONE)), int(round(body.head_across * _ONE)))
    cv2.ellipse(label, _pt(hx + head_x, hy + head_y), axes, angle, 0, 360, SKIN, -1, line, _SHIFT)
    nx, ny = sk["n"]
    back = -ct * body.head_across * 0.45
    hair_scale = 0.8 - 0.25 * max(st, 0.0)
    hair_axes = (int(round(body.head_along * 0.9 * _ONE)), int(round(body.head_across * hair_scale * _ONE)))
    cv2.ellipse(
        label,
        _pt(hx + head_x + nx * back + ux * 1.2, hy + head_y + ny * back + uy * 1.2),
        hair_axes,
        angle,
        0,
        360,
        HAIR,
        -1,
        line,
        _SHIFT,
    )
    limb(near, SKIN, "shoulder", "elbow", "hand", body.upper_arm_thick, body.forearm_thick)
    xs = [v[0] for n, v in sk.items() if isinstance(v, tuple) and n not in ("u", "n")]
    ys = [v[1] for n, v in sk.items() if isinstance(v, tuple) and n not in ("u", "n")]
    pad = body.torso_thick + 2
    return (
        int(hx + min(xs)) - pad,
        int(hy + min(ys)) - pad,
        int(hx + max(xs)) + pad + 1,
        int(hy + max(ys)) + pad + 1,
    )


def _draw_splash(label: np.ndarray, plan: DivePlan, t: float, ox: float) -> tuple[int, int, int, int] | None:
    """Spray column, drops and foam after the hands enter the water; None before the entry."""
    since = t - plan.entry_start
    if since < 0:
        return None
    k = plan.geometry.scale
    water = plan.geometry.water
    x = plan.entry_x - ox
    rise = min(1.0, since / 5.0)
    env = rise if since < 5.0 else math.exp(-(since - 5.0) / 7.0)
    height = plan.splash_height * env
    width = plan.splash_width * (0.6 + 0.4 * rise)
    line = cv2.LINE_8
    foam_w = max(2.0, plan.splash_width * (0.5 + 0.5 * min(since / 8.0, 1.0)) * math.exp(-since / 60.0))
    cv2.ellipse(
        label,
        _pt(x, water),
        (int(foam_w * _ONE), int(max(1.5, 3.0 * k) * _ONE)),
        0,
        0,
        360,
        FOAM,
        -1,
        line,
        _SHIFT,
    )
    if height >= 1.0:
        cv2.ellipse(
            label,
            _pt(x, water - height / 2.0),
            (int(width * 0.3 * _ONE), int(height / 2.0 * _ONE)),
            0,
            0,
            360,
            SPRAY,
            -1,
            line,
            _SHIFT,
        )
        for i, (dx, share, radius) in enumerate(plan.droplets):
            px = x + dx * width * (0.5 + rise)
            py = water - share * height
            cv2.circle(
                label, _pt(px, py), int(radius * k * _ONE), SPRAY if i % 2 else SPRAY_DARK, -1, line, _SHIFT
            )
    reach = width * 1.6 + plan.splash_width + 4
    return int(x - reach), int(water - plan.splash_height - 6 * k), int(x + reach) + 1, int(water + 6 * k) + 1


def camera_offsets(plan: DivePlan, times: np.ndarray) -> np.ndarray:
    """Integer background column of the frame's left edge at each time (slow pan to the right)."""
    g = plan.geometry
    prog = np.clip(np.asarray(times, np.float64) / max(plan.num_frames - 1, 1), 0.0, 1.0)
    ease = prog * prog * (3.0 - 2.0 * prog)
    return np.round(g.pan_margin - g.pan / 2.0 + g.pan * ease).astype(np.int64)


def render_frames(
    plan: DivePlan, scene: Scene, times: Sequence[float] | np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame uint8 RGB [H,W,3], mask uint8 [H,W] 0/1) at the given clip times (default 0..T-1)."""
    g = scene.geometry
    times = np.arange(plan.num_frames, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    cams = camera_offsets(plan, times)
    water_row = int(math.ceil(g.water - 0.5))
    label = np.zeros((g.height, g.width), np.uint8)
    for t, cam in zip(times, cams, strict=True):
        frame = np.ascontiguousarray(scene.background[:, cam : cam + g.width])
        label.fill(0)
        ox = float(cam - g.pan_margin)  # world x of the frame's left edge
        pose = pose_at(plan, float(t))
        x0, y0, x1, y1 = _draw_diver(label, pose, plan, ox)
        label[water_row:] = 0  # underwater parts are hidden by the water
        if not scene.plain:
            box = _draw_splash(label, plan, float(t), ox)
            if box is not None:
                x0, y0, x1, y1 = min(x0, box[0]), min(y0, box[1]), max(x1, box[2]), max(y1, box[3])
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, g.width), min(y1, g.height)
        mask = np.zeros((g.height, g.width), np.uint8)
        if x1 > x0 and y1 > y0:
            roi = label[y0:y1, x0:x1]
            drawn = roi != 0
            frame[y0:y1, x0:x1][drawn] = scene.palette[roi[drawn]]
            mask[y0:y1, x0:x1] = drawn & (roi <= DIVER_MAX_ID)
        yield frame, mask


def frame_labels(plan: DivePlan) -> np.ndarray:
    """Per-frame step type ids (int64, length num_frames)."""
    labels = np.empty(plan.num_frames, np.int64)
    a, e = plan.takeoff_end, plan.entry_start
    labels[: a + 1] = plan.info.takeoff_label
    for t in range(a + 1, e):
        labels[t] = plan.phases[_phase_index(plan, (t - a) / (e - a))].label
    labels[e:] = ENTRY_LABEL
    return labels


@dataclass(frozen=True)
class RenderedDive:
    """A dive rendered in memory."""

    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    masks: np.ndarray  # [T, H, W] uint8, 1 = diver
    labels: np.ndarray  # [T] int64 step type ids
    plan: DivePlan
    scene: Scene


def render_dive(plan: DivePlan, scene: Scene) -> RenderedDive:
    """Render every frame of a planned dive into arrays."""
    g = scene.geometry
    frames = np.empty((plan.num_frames, g.height, g.width, 3), np.uint8)
    masks = np.empty((plan.num_frames, g.height, g.width), np.uint8)
    for i, (frame, mask) in enumerate(render_frames(plan, scene)):
        frames[i] = frame
        masks[i] = mask
    return RenderedDive(frames, masks, frame_labels(plan), plan, scene)
