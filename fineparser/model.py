"""FineParser, composed from its parts, with the decomposition that makes inference cheap.

Everything heavy depends on one clip only (`encode`); only the small `pair_head` mixes a query with
an exemplar.  The paper's test procedure (whole network once per query/exemplar pair) is therefore
`mean_k(score_k + pair_head(encode(query), encode(exemplar_k)))`, with exemplar encodings cached.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from fineparser.config import FineParserConfig
from fineparser.modules.decoder import Decoder
from fineparser.modules.dim_reducer import DimReducer
from fineparser.modules.i3d import I3DBackbone
from fineparser.modules.regressor import DeltaRegressor
from fineparser.modules.spatial_parser import SpatialActionParser
from fineparser.modules.static_encoder import StaticVisualEncoder
from fineparser.modules.temporal_parser import TemporalActionParser, transitions_from_probs
from fineparser.resample import resample_windows
from fineparser.scoring import final_score
from fineparser.spec import FRAME_SIZE, NUM_FRAMES, NUM_WINDOWS, STEP_WEIGHTS, WINDOW_LENGTH, WINDOW_STARTS

NUM_MASK_MAPS = 5
"""Four side branches plus the fused map."""


@dataclass
class QueryFeatures:
    """Everything the pair head needs of one clip (batch-first tensors)."""

    window_features: Tensor  # [B, 9, D] I3D features gated by the spatial parser
    transitions: Tensor  # [B, 2] int64 frame indices (0..95)
    transition_probs: Tensor  # [B, 96, 2]
    static_tokens: Tensor  # [B, 12, token_dim]
    mask_logits: Tensor | None = None  # [B, 9, 16, 112, 112] fused map, only when asked for

    @property
    def batch_size(self) -> int:
        return self.window_features.shape[0]

    def select(self, index: Tensor | slice | int) -> QueryFeatures:
        """Rows of every tensor (keeps the batch dimension for an int)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return QueryFeatures(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                for f in fields(self)})

    def expand(self, batch: int) -> QueryFeatures:
        """Broadcast a batch of one to `batch` rows (no copy)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot pair a batch of {self.batch_size} queries with {batch} exemplars")
        return replace(self, **{f.name: getattr(self, f.name).expand(batch, *getattr(self, f.name).shape[1:])
                                for f in fields(self) if getattr(self, f.name) is not None})

    @staticmethod
    def cat(items: list[QueryFeatures]) -> QueryFeatures:
        """Concatenate along the batch (mask logits kept only if every item has them)."""
        out = {}
        for f in fields(QueryFeatures):
            values = [getattr(i, f.name) for i in items]
            out[f.name] = None if any(v is None for v in values) else torch.cat(values, 0)
        return QueryFeatures(**out)


@dataclass
class PairOutput:
    """Score difference query - exemplar, and its split over the three steps (which sums to it)."""

    delta: Tensor  # [K]
    step_deltas: Tensor  # [K, 3]: approach/take-off, flight, entry


@dataclass
class ScoreResult:
    """The paper's test-time prediction for one query, with its explanation."""

    score: Tensor  # [] predicted final score
    deltas: Tensor  # [K] per exemplar
    step_deltas: Tensor  # [K, 3]
    transitions: Tensor  # [2]
    exemplar_scores: Tensor  # [K]


@dataclass
class PairForward:
    """Training outputs of one (clip_1, clip_2) batch in both directions."""

    delta_12: Tensor  # [B] predicted score(1) - score(2)
    delta_21: Tensor  # [B]
    transition_probs: Tensor  # [2B, 96, 2]: clip_1 rows then clip_2 rows
    predicted_transitions: Tensor  # [2B, 2]
    mask_logits: Tensor | None  # [2B, 9, 5, 16, 112, 112]
    window_features: Tensor | None = None  # [2B, 9, D] gated window features (what the temporal parser reads)


def split_windows(x: Tensor) -> Tensor:
    """[B, C, 96, ...] -> [B, 9, C, 16, ...]: the nine overlapping windows of a clip (or mask)."""
    return torch.stack([x[:, :, s:s + WINDOW_LENGTH] for s in WINDOW_STARTS], 1)


class FineParser(nn.Module):
    """The FineParser network (CVPR 2024) with module names of the official checkpoint."""

    def __init__(self, config: FineParserConfig | None = None) -> None:
        super().__init__()
        self.config = (config or FineParserConfig.from_preset("full")).validate()
        cfg = self.config
        self.base_model = I3DBackbone(cfg)
        self.segmenter = SpatialActionParser(cfg)
        self.psnet_model = TemporalActionParser(cfg)
        self.video_encoder = StaticVisualEncoder(cfg)
        self.dim_reducer1 = DimReducer(cfg)
        self.dim_reducer2 = DimReducer(cfg)
        self.dim_reducer3 = DimReducer(cfg)
        self.decoder1 = Decoder(cfg)
        self.decoder2 = Decoder(cfg)
        self.decoder3 = Decoder(cfg)
        self.decoder4 = Decoder(cfg)
        self.regressor_delta1 = DeltaRegressor(cfg)
        self.regressor_delta2 = DeltaRegressor(cfg)
        self.register_buffer("step_weights", torch.tensor(STEP_WEIGHTS), persistent=False)

    # ---- input checks ---------------------------------------------------------------------
    @staticmethod
    def check_clip(clip: Tensor, name: str = "clip") -> None:
        """Raise ValueError unless `clip` is a float tensor [B, 3, 96, 112, 112]."""
        expected = f"[B, 3, {NUM_FRAMES}, {FRAME_SIZE}, {FRAME_SIZE}]"
        if not isinstance(clip, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {expected}, got {type(clip).__name__}")
        if not clip.is_floating_point():
            raise ValueError(f"{name} must be a normalised float tensor {expected}, got dtype {clip.dtype} "
                             "(uint8 frames go through fineparser.preprocess.normalize_clip first)")
        if clip.dim() != 5 or tuple(clip.shape[1:]) != (3, NUM_FRAMES, FRAME_SIZE, FRAME_SIZE):
            raise ValueError(f"{name} must have shape {expected}, got {list(clip.shape)}")

    # ---- encoder: one clip ----------------------------------------------------------------
    def window_features(self, clip: Tensor, with_masks: bool = False) -> tuple[Tensor, Tensor | None]:
        """Gated window features [B, 9, D] and, if asked, mask logits [B, 9, 5, 16, 112, 112]."""
        b = clip.shape[0]
        windows = split_windows(clip).flatten(0, 1)  # [B*9, 3, 16, 112, 112]
        i3d = self.base_model(windows)
        _, sap, masks = self.segmenter(windows, with_masks=with_masks)
        gated = (i3d * torch.sigmoid(sap)).reshape(b, NUM_WINDOWS, -1)
        if masks is None:
            return gated, None
        logits = torch.stack(masks, 1).reshape(b, NUM_WINDOWS, NUM_MASK_MAPS, WINDOW_LENGTH, *masks[0].shape[-2:])
        return gated, logits

    def parse_time(self, window_features: Tensor) -> tuple[Tensor, Tensor]:
        """Transition probabilities [B, 96, 2] and transition frames [B, 2]."""
        probs = self.psnet_model(window_features)
        return probs, transitions_from_probs(probs)

    def encode(self, clip: Tensor, with_masks: bool = False, transitions: Tensor | None = None) -> QueryFeatures:
        """Encode one batch of clips; `transitions` overrides the predicted ones for the static encoder."""
        self.check_clip(clip)
        gated, masks = self.window_features(clip, with_masks)
        probs, predicted = self.parse_time(gated)
        used = predicted if transitions is None else transitions.to(predicted)
        return QueryFeatures(
            window_features=gated,
            transitions=used,
            transition_probs=probs,
            static_tokens=self.video_encoder(clip, used),
            mask_logits=None if masks is None else masks[:, :, -1],
        )

    # ---- pair head: query x exemplars -----------------------------------------------------
    def dynamic_tokens(self, window_features: Tensor, st: Tensor, ed: Tensor) -> list[Tensor]:
        """Three [B, 12, token_dim] token sets of a clip resampled at the pair's (st, ed) windows."""
        resampled = resample_windows(window_features.transpose(1, 2), st, ed).transpose(1, 2)
        return [self.dim_reducer3(resampled[:, 0:4]), self.dim_reducer1(resampled[:, 4:8]),
                self.dim_reducer2(resampled[:, 8:12])]

    def pair_delta(self, dynamic_q: list[Tensor], static_q: Tensor, dynamic_e: list[Tensor],
                   static_e: Tensor) -> PairOutput:
        """Delta of query vs exemplar from their pair tokens (one direction)."""
        dynamic = torch.cat([self.decoder2(dynamic_q[0], dynamic_e[0]), self.decoder2(dynamic_q[1], dynamic_e[1]),
                             self.decoder4(dynamic_q[2], dynamic_e[2])], 1)
        static = torch.cat([self.decoder1(static_q[:, 0:4], static_e[:, 0:4]),
                            self.decoder1(static_q[:, 4:8], static_e[:, 4:8]),
                            self.decoder3(static_q[:, 8:12], static_e[:, 8:12])], 1)
        k = dynamic.shape[0]
        d1 = self.regressor_delta1(dynamic).reshape(k, 3, -1).mean(-1)  # step means of the 36 dynamic rows
        d2 = self.regressor_delta2(static).reshape(k, 3, -1).mean(-1)  # step means of the 12 static rows
        step_deltas = self.step_weights * (d1 + d2) * (self.config.score_scale / 2)
        return PairOutput(delta=step_deltas.sum(-1), step_deltas=step_deltas)

    @staticmethod
    def pair_windows(transitions_q: Tensor, transitions_e: Tensor) -> tuple[Tensor, Tensor]:
        """The pair's step boundaries in window units: (tQ + tE) // 20."""
        summed = transitions_q + transitions_e
        return torch.div(summed[:, 0], 20, rounding_mode="floor"), torch.div(summed[:, 1], 20, rounding_mode="floor")

    def pair_head(self, query: QueryFeatures, exemplars: QueryFeatures) -> PairOutput:
        """Deltas of the query against K exemplars; a query batch of 1 is broadcast over K."""
        query = query.expand(exemplars.batch_size)
        st, ed = self.pair_windows(query.transitions, exemplars.transitions)
        dyn_q = self.dynamic_tokens(query.window_features, st, ed)
        dyn_e = self.dynamic_tokens(exemplars.window_features, st, ed)
        return self.pair_delta(dyn_q, query.static_tokens, dyn_e, exemplars.static_tokens)

    def pair_both_ways(self, window_features: Tensor, static_tokens: Tensor, transitions_1: Tensor,
                       transitions_2: Tensor) -> tuple[PairOutput, PairOutput]:
        """Training pair head: (1 vs 2, 2 vs 1) for clip-1 rows then clip-2 rows of the features.

        The dim reducers see the two sides as `config.pair_static_batch` says: `separate` (the paper)
        or `joint` (one batch, so training-mode BN normalises both sides by one set of statistics).
        """
        b = transitions_1.shape[0]
        st, ed = self.pair_windows(transitions_1, transitions_2)
        if self.config.pair_static_batch == "joint":
            dyn = self.dynamic_tokens(window_features, st.repeat(2), ed.repeat(2))
            dyn_1, dyn_2 = [x[:b] for x in dyn], [x[b:] for x in dyn]
        else:
            dyn_1 = self.dynamic_tokens(window_features[:b], st, ed)
            dyn_2 = self.dynamic_tokens(window_features[b:], st, ed)
        static_1, static_2 = static_tokens[:b], static_tokens[b:]
        return (self.pair_delta(dyn_1, static_1, dyn_2, static_2),
                self.pair_delta(dyn_2, static_2, dyn_1, static_1))

    @torch.no_grad()
    def score(self, query_clip: Tensor, exemplar_clips: Tensor | QueryFeatures,
              exemplar_scores: Tensor) -> ScoreResult:
        """The paper's test prediction: mean over exemplars of (exemplar score + delta)."""
        self.check_clip(query_clip, "query_clip")
        if query_clip.shape[0] != 1:
            raise ValueError(f"score() takes one query clip, got a batch of {query_clip.shape[0]}")
        query = self.encode(query_clip)
        exemplars = exemplar_clips if isinstance(exemplar_clips, QueryFeatures) else self.encode(exemplar_clips)
        exemplar_scores = torch.as_tensor(exemplar_scores, dtype=query.window_features.dtype,
                                          device=query.window_features.device).reshape(-1)
        if exemplar_scores.shape[0] != exemplars.batch_size:
            raise ValueError(f"{exemplars.batch_size} exemplars but {exemplar_scores.shape[0]} exemplar scores")
        out = self.pair_head(query, exemplars)
        return ScoreResult(score=final_score(exemplar_scores, out.delta), deltas=out.delta,
                           step_deltas=out.step_deltas, transitions=query.transitions[0],
                           exemplar_scores=exemplar_scores)

    # ---- training: both directions ------------------------------------------------------------
    def forward(self, clip_1: Tensor, clip_2: Tensor, transitions_1: Tensor | None = None,
                transitions_2: Tensor | None = None, with_masks: bool = True) -> PairForward:
        """Both directions of a pair batch, as the paper trains it.

        Given transitions (ground truth, in the convention of `fineparser.spec.target_transitions`) are
        used where the paper's training uses them: for the static encoder and for the pair's step
        boundaries; otherwise the predicted ones are used (test mode).
        """
        self.check_clip(clip_1, "clip_1")
        self.check_clip(clip_2, "clip_2")
        b = clip_1.shape[0]
        # Both I3D trunks see the two clips in one batch, as the paper's training does: BN layers that are
        # not frozen normalise the pair with one set of batch statistics.
        gated, masks = self.window_features(torch.cat([clip_1, clip_2]), with_masks)
        probs_1, pred_1 = self.parse_time(gated[:b])
        probs_2, pred_2 = self.parse_time(gated[b:])
        used_1 = pred_1 if transitions_1 is None else transitions_1.to(pred_1)
        used_2 = pred_2 if transitions_2 is None else transitions_2.to(pred_2)
        if self.config.pair_static_batch == "joint":
            # One batch: training-mode BN of the static encoder sees both clips at once (docs/train.md).
            static = self.video_encoder(torch.cat([clip_1, clip_2]), torch.cat([used_1, used_2]))
        else:  # the paper: query, then exemplar
            static = torch.cat([self.video_encoder(clip_1, used_1), self.video_encoder(clip_2, used_2)])
        out_12, out_21 = self.pair_both_ways(gated, static, used_1, used_2)
        return PairForward(delta_12=out_12.delta, delta_21=out_21.delta,
                           transition_probs=torch.cat([probs_1, probs_2]),
                           predicted_transitions=torch.cat([pred_1, pred_2]), mask_logits=masks,
                           window_features=gated)


def parameter_counts(model: FineParser) -> dict[str, int]:
    """Parameters per top-level part, in the official checkpoint's module names."""
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
