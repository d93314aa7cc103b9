"""Ulysses sequence parallelism without processes: shard/label/position logic, shapes, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from surge.parallel import ulysses
from surge.parallel.ulysses import UlyssesAttention, check_heads, shard_sequence_for_rank


def _batch(b: int = 2, s: int = 8) -> dict[str, torch.Tensor]:
    ids = torch.arange(b * s).reshape(b, s)
    return {"input_ids": ids, "labels": ids + 100, "attention_mask": torch.ones(b, s, dtype=torch.long)}


def test_shards_concatenate_to_the_shifted_full_batch() -> None:
    batch = _batch()
    shards = [shard_sequence_for_rank(batch, r, 2) for r in range(2)]
    assert sorted(shards[0]) == ["attention_mask", "input_ids", "position_ids", "shift_labels"]
    assert all(s["input_ids"].shape == (2, 4) for s in shards)
    cat = {k: torch.cat([s[k] for s in shards], dim=1) for k in shards[0]}
    assert torch.equal(cat["input_ids"], batch["input_ids"])
    expected = torch.cat([batch["labels"][:, 1:], torch.full((2, 1), -100)], dim=1)
    assert torch.equal(cat["shift_labels"], expected)
    assert torch.equal(shards[1]["position_ids"], torch.tensor([[4, 5, 6, 7]] * 2))
    # Labels are shifted across the shard boundary: rank 0's last label is rank 1's first token's label.
    assert shards[0]["shift_labels"][0, -1] == batch["labels"][0, 4]


def test_given_position_ids_are_split_not_rebuilt() -> None:
    batch = _batch(1, 6)
    batch["position_ids"] = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two packed sequences
    shards = [shard_sequence_for_rank(batch, r, 3) for r in range(3)]
    assert [s["position_ids"].tolist() for s in shards] == [[[0, 1]], [[2, 0]], [[1, 2]]]


def test_shard_errors_name_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"sequence length 8 is not divisible by sp size 3"):
        shard_sequence_for_rank(_batch(), 0, 3)
    with pytest.raises(ValueError, match="sp_rank=2"):
        shard_sequence_for_rank(_batch(), 2, 2)
    left_padded = _batch()
    left_padded["attention_mask"][0, 0] = 0
    with pytest.raises(ValueError, match="right padding"):
        shard_sequence_for_rank(left_padded, 0, 2)
    right_padded = _batch()
    right_padded["attention_mask"][0, -2:] = 0
    shard_sequence_for_rank(right_padded, 1, 2)


def test_heads_not_divisible_name_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"3 key/value heads .* not divisible by sp size 2"):
        check_heads(3, 2, "key/value heads")
    check_heads(4, 2)


@pytest.fixture
def fake_sp2(monkeypatch: pytest.MonkeyPatch) -> None:
    """An sp group of 2 whose all-to-all keeps the local buffer: shapes only."""
    monkeypatch.setattr(ulysses, "_group_size", lambda group: 2)
    monkeypatch.setattr(ulysses, "_all_to_all", lambda x, group: x.contiguous())


@pytest.mark.usefixtures("fake_sp2")
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_attention_shapes(layout: str) -> None:
    seen: list[torch.Size] = []

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        seen.append(q.shape)
        return q

    b, s_local, h, d = 2, 3, 4, 5
    x = torch.randn(b, s_local, h, d) if layout == "bshd" else torch.randn(b, h, s_local, d)
    out = UlyssesAttention(attend, None, layout=layout)(x, x, x)  # type: ignore[arg-type]
    assert out.shape == x.shape
    assert seen[0] == ((b, 2 * s_local, h // 2, d) if layout == "bshd" else (b, h // 2, 2 * s_local, d))


@pytest.mark.usefixtures("fake_sp2")
def test_attention_rejects_indivisible_gqa_heads() -> None:
    q, kv = torch.randn(1, 4, 4, 2), torch.randn(1, 4, 1, 2)
    with pytest.raises(ValueError, match=r"1 key/value heads .* sp size 2"):
        UlyssesAttention(F.scaled_dot_product_attention, None)(q, kv, kv)
    with pytest.raises(ValueError, match="layout"):
        UlyssesAttention(F.scaled_dot_product_attention, None, layout="sbhd")  # type: ignore[arg-type]


def test_import_is_light() -> None:
    code = (
        "import sys, surge.parallel as p; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, sorted(sys.modules); "
        "assert 'apply_ulysses' in dir(p)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
