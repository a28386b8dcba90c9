"""The decomposed inference equals the paper's paired test procedure; shapes and input checks."""

from __future__ import annotations

import pytest
import torch

from fineparser.config import ConfigError, FineParserConfig
from fineparser.model import FineParser, QueryFeatures, parameter_counts


def clips(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 96, 112, 112, generator=gen)


def paper_test_score(model: FineParser, query: torch.Tensor, exemplars: torch.Tensor,
                     scores: torch.Tensor) -> torch.Tensor:
    """The paper's test loop: the whole network on (query, exemplar_k) once per exemplar."""
    total = torch.zeros(())
    for k in range(exemplars.shape[0]):
        out = model(query, exemplars[k:k + 1], with_masks=False)
        total = total + out.delta_12[0] + scores[k]
    return total / exemplars.shape[0]


@torch.no_grad()
def test_decomposed_score_equals_paired_reference(tiny_model):
    query, exemplars = clips(1, 0), clips(4, 1)
    scores = torch.tensor([61.2, 75.0, 48.6, 80.1])
    result = tiny_model.score(query, exemplars, scores)
    reference = paper_test_score(tiny_model, query, exemplars, scores)
    assert abs(result.score.item() - reference.item()) <= 1e-5
    # The explanation adds up: step deltas sum to each exemplar's delta.
    torch.testing.assert_close(result.step_deltas.sum(1), result.deltas)
    assert result.deltas.shape == (4,) and result.step_deltas.shape == (4, 3)
    # Deltas are not all equal: the exemplars really are compared one by one.
    assert result.deltas.std() > 0


@torch.no_grad()
def test_cached_exemplar_features_give_the_same_score(tiny_model):
    query, exemplars = clips(1, 2), clips(3, 3)
    scores = torch.tensor([50.0, 60.0, 70.0])
    bank = QueryFeatures.cat([tiny_model.encode(exemplars[i:i + 1]) for i in range(3)])
    direct = tiny_model.score(query, exemplars, scores)
    cached = tiny_model.score(query, bank, scores)
    assert abs(direct.score.item() - cached.score.item()) <= 1e-5


@torch.no_grad()
def test_encode_outputs(tiny_model):
    cfg = tiny_model.config
    q = tiny_model.encode(clips(2, 4), with_masks=True)
    assert q.window_features.shape == (2, 9, cfg.feature_dim)
    assert q.transition_probs.shape == (2, 96, 2)
    assert q.static_tokens.shape == (2, 12, cfg.token_dim)
    assert q.mask_logits.shape == (2, 9, 16, 112, 112)
    assert q.transitions.dtype == torch.int64
    assert bool(((q.transitions[:, 0] >= 0) & (q.transitions[:, 0] < 48)).all())
    assert bool(((q.transitions[:, 1] >= 48) & (q.transitions[:, 1] < 96)).all())
    assert tiny_model.encode(clips(1, 4)).mask_logits is None


def test_training_forward_both_directions_and_gradients():
    torch.manual_seed(0)
    model = FineParser(FineParserConfig.from_preset("tiny")).train()
    gt_1, gt_2 = torch.tensor([[20, 70]]), torch.tensor([[30, 80]])
    out = model(clips(1, 5), clips(1, 6), gt_1, gt_2)
    assert out.delta_12.shape == (1,) and out.delta_21.shape == (1,)
    assert out.transition_probs.shape == (2, 96, 2)
    assert out.mask_logits.shape == (2, 9, 5, 16, 112, 112)
    (out.delta_12.sum() - out.delta_21.sum() + out.transition_probs.mean() + out.mask_logits.mean()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [], f"parameters without gradient: {unused[:5]}"


def test_fresh_trunk_features_keep_unit_scale_with_fresh_batchnorm():
    # A model trained from scratch with frozen I3D BN (or evaluated before any statistics exist) sees the
    # trunk with identity BN; its features must stay far above the BN epsilon of the layers after it.
    torch.manual_seed(0)
    model = FineParser(FineParserConfig.from_preset("tiny")).eval()
    with torch.no_grad():
        gated, _ = model.window_features(clips(1, 7))
    assert float(gated.std()) > 1e-2, f"window features collapsed to std {float(gated.std()):.2e}"


@pytest.mark.parametrize("bad,needle", [
    (torch.zeros(1, 3, 96, 112, 112, dtype=torch.uint8), "float"),
    (torch.zeros(1, 3, 64, 112, 112), "[B, 3, 96, 112, 112]"),
    (torch.zeros(3, 96, 112, 112), "[B, 3, 96, 112, 112]"),
    (torch.zeros(1, 96, 3, 112, 112), "got [1, 96, 3, 112, 112]"),
])
def test_bad_clip_is_a_clear_value_error(tiny_model, bad, needle):
    with pytest.raises(ValueError) as info:
        tiny_model.encode(bad)
    assert needle in str(info.value)


def test_full_preset_has_the_official_parameter_count():
    # Official total 51,759,702 minus the unused SVE fc (513,000) and regressor_delta3 (33,153).
    with torch.device("meta"):
        model = FineParser(FineParserConfig.from_preset("full"))
    counts = parameter_counts(model)
    assert sum(counts.values()) == 51_213_549
    assert counts["base_model"] == 12_287_264 and counts["segmenter"] == 14_763_237
    assert counts["psnet_model"] == 128_846 and counts["decoder1"] == 149_760
    assert counts["dim_reducer1"] == 673_704 and counts["regressor_delta1"] == 33_153


def test_config_yaml_round_trip_and_unknown_keys():
    for name in FineParserConfig.preset_names():
        cfg = FineParserConfig.from_preset(name)
        assert FineParserConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError) as info:
        FineParserConfig.from_dict({"preset": "tiny", "token_dims": 8})
    assert "token_dims" in str(info.value) and "token_dim" in str(info.value)
    with pytest.raises(ConfigError, match="8 x token_dim"):
        FineParserConfig.from_preset("tiny", token_dim=32)
    with pytest.raises(ConfigError, match="known presets"):
        FineParserConfig.from_preset("huge")


def test_summary_reports_the_decomposition_gain():
    from fineparser.summary import format_summary, summarise

    s = summarise("tiny", exemplars=10)
    # One encode instead of 2 x 10 encodes (query and exemplar each pair): at least 10x fewer FLOPs.
    assert s["ratio"] > 10
    assert s["pair_head_total"] < 0.1 * s["encode_total"]
    assert "ratio paper / ours" in format_summary(s)


def test_pair_static_batch_separate_and_joint_differ_only_by_batchnorm_batch_statistics():
    from conftest import randomise_batchnorm

    torch.manual_seed(0)
    joint = FineParser(FineParserConfig.from_preset("tiny", pair_static_batch="joint"))
    randomise_batchnorm(joint)
    separate = FineParser(FineParserConfig.from_preset("tiny"))
    assert separate.config.pair_static_batch == "separate"  # the default is the paper's
    separate.load_state_dict(joint.state_dict())
    clip_1, clip_2 = clips(2, 8), clips(2, 9)
    gt_1, gt_2 = torch.tensor([[20, 70], [31, 58]]), torch.tensor([[26, 76], [40, 83]])

    def deltas(model: FineParser, a: torch.Tensor, b: torch.Tensor, ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        out = model(a, b, ta, tb, with_masks=False)
        return torch.cat([out.delta_12, out.delta_21])

    def frozen_bn(model: FineParser) -> FineParser:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        return model

    with torch.no_grad():
        # Eval mode, and train mode with every BN frozen: the switch changes nothing.
        torch.testing.assert_close(deltas(joint.eval(), clip_1, clip_2, gt_1, gt_2),
                                   deltas(separate.eval(), clip_1, clip_2, gt_1, gt_2), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(deltas(frozen_bn(joint.train()), clip_1, clip_2, gt_1, gt_2),
                                   deltas(frozen_bn(separate.train()), clip_1, clip_2, gt_1, gt_2),
                                   rtol=1e-5, atol=1e-5)
        # Train mode: BN normalises by batch statistics, one set for the pair or one per side ...
        joint.train(), separate.train()
        a = deltas(joint, clip_1, clip_2, gt_1, gt_2)
        b = deltas(separate, clip_1, clip_2, gt_1, gt_2)
        assert (a - b).abs().max() > 1e-3
        # ... and nothing else differs: when both sides are the same clips, the pair's statistics are each side's.
        torch.testing.assert_close(deltas(joint, clip_1, clip_1, gt_1, gt_1),
                                   deltas(separate, clip_1, clip_1, gt_1, gt_1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="pair_static_batch must be one of separate, joint"):
        FineParserConfig.from_preset("tiny", pair_static_batch="mixed")
