"""Every DeepSpeed config of DeepSpeedExamples and of DeepSpeed's own docs and tests
(tests/data/deepspeed_configs, see its README) is accepted, or refused only for a feature
surge does not offer that the config switches on (see [Note: what DeepSpeed accepts])."""

import fnmatch
import json
from pathlib import Path

import pytest

from surge.config.plugins import DeepSpeedPlugin
from surge.deepspeed.ds_config import parse_deepspeed_config

DATA = Path(__file__).resolve().parents[1] / "data" / "deepspeed_configs"
CONFIGS = sorted(DATA.glob("DeepSpeed*.json"))

# The configs refused, by the feature their message must name (file-name patterns).
REFUSED = {
    "compression_training": ["*compression__*__ds_config_*", "*config-json.md--block2[679]",
                             "*config-json.md--block3[123]"],
    "optimizer.type": ["*__1-bit_adam__*", "*__01_adam__*", "*__1-bit_lamb__*",
                       "*bing_bert__deepspeed_bsz*_lamb_config_*", "*onebit-adam.md*", "*onebit-lamb.md*",
                       "*zero-one-adam.md*", "*config-json.md--block0[234]"],
    "scheduler.type": ["*lrrt.md*", "*one-cycle.md*"],
    "data_efficiency": ["*data_efficiency__*", "*config-json.md--block17"],
    "curriculum_learning": ["*curriculum-learning.md*", "*config-json.md--block18"],
    "progressive_layer_drop": ["*progressive_layer_drop*", "*progressive_layer_dropping.md*"],
}
# Doc snippets DeepSpeed refuses too: max_grad_norm "is not supported as an optimizer
# parameter"; fp16_master_weights_and_grads needs ZeRO stage 2 (the page's other snippet).
DEEPSPEED_REFUSES = {
    "DeepSpeed--docs___tutorials__bert-pretraining.md--block02": "max_grad_norm",
    "DeepSpeed--docs___tutorials__mixture-of-experts.md--block02": "fp16_master_weights_and_grads",
}


def _refused_for(name: str) -> str | None:
    found = [key for key, patterns in REFUSED.items() if any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert len(found) <= 1, (name, found)
    return found[0] if found else None


def test_the_collection_is_complete():
    sources = json.loads((DATA / "SOURCES.json").read_text())
    assert sorted(sources["configs"]) == [p.name for p in CONFIGS]
    assert len(CONFIGS) > 150
    for patterns in REFUSED.values():  # each pattern still names a config
        for pattern in patterns:
            assert any(fnmatch.fnmatch(p.stem, pattern) for p in CONFIGS), pattern


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_config_is_accepted_or_refused_for_a_named_feature(path):
    feature = _refused_for(path.stem)
    if feature is not None:
        with pytest.raises(ValueError) as err:
            parse_deepspeed_config(path)
        message = str(err.value)
        assert f"DeepSpeed config {feature}" in message and "a DeepSpeed feature surge does not offer" in message
        assert "unknown" not in message.lower()
    elif path.stem in DEEPSPEED_REFUSES:
        with pytest.raises(ValueError, match="DeepSpeed refuses") as err:
            parse_deepspeed_config(path)
        assert DEEPSPEED_REFUSES[path.stem] in str(err.value)
    else:
        settings = parse_deepspeed_config(path)
        assert not any("not a DeepSpeed key" in note for note in settings.unhonoured), settings.unhonoured
        plugin = DeepSpeedPlugin(hf_ds_config=str(path))  # the Accelerate path takes it as well
        assert plugin.zero_stage == settings.zero_stage
