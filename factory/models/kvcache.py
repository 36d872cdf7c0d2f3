"""KV memory for the local backend's continuous batching: one slot per running row, each with its
own length, and a cache of prompt-prefix blocks shared between calls.

`SlotCache` duck-types the one method of transformers' `Cache` that attention layers call
(`update`): the runner tells it, before each forward, which slots the forward covers and where
each query token's key and value go; `update` writes them there and hands back the slots' keys and
values up to the longest row. The runner passes a 4D attention mask, which transformers uses as
is, so every row sees only its own tokens. Rows stay packed in slots 0..n-1 (a finished row's slot
takes the last row's), so a decode step reads one contiguous view and copies nothing.

`PrefixCache` keeps the keys and values of prompt prefixes in blocks of `BLOCK` tokens, keyed by a
hash of every token up to the block's end (as vLLM's automatic prefix caching does), least recently
used first out. A new row whose prompt starts with cached blocks copies them into its slot and
prefills only the rest: the system text and few-shot examples that critique and revision calls
share are computed once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

BLOCK = 32  # tokens per prefix block


def prefill_groups(needs: list[int], forward_cost: int) -> list[list[int]]:
    """The joiners (by their uncached prompt lengths) split into prefill forwards at the least cost.
    A forward pads every row to its longest uncached prompt (critique prompts of 60 and 300 new
    tokens: a quarter of a run's prefill compute was padding), and each forward costs `forward_cost`
    tokens' worth more: so sort by length and cut the sorted list where it pays (dynamic programming,
    over a batch's joiners). Returns lists of indices into `needs`, shortest first."""
    order = sorted(range(len(needs)), key=needs.__getitem__)
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + forward_cost + (end - start) * needs[order[end - 1]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class SlotCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, slots: int, dtype: torch.dtype,
                 device: torch.device, capacity: int = 256):
        self.shape = (layers, 2, slots, kv_heads, capacity, head_dim)
        self.kv = torch.zeros(self.shape, dtype=dtype, device=device)
        self._slots = slice(0, 0)
        self._index: torch.Tensor | None = None  # [rows, 1]
        self._positions: torch.Tensor | None = None  # [rows, queries]: where each query's key/value goes
        self._kv_len = 0

    @property
    def capacity(self) -> int:
        return self.kv.shape[4]

    def ensure(self, length: int) -> None:
        """Room for `length` positions per slot (doubling, so growth is rare)."""
        if length <= self.capacity:
            return
        new = self.capacity
        while new < length:
            new *= 2
        grown = self.kv.new_zeros((*self.shape[:4], new, self.shape[5]))
        grown[:, :, :, :, : self.capacity] = self.kv
        self.kv = grown

    def prepare(self, first: int, positions: torch.Tensor, kv_len: int) -> None:
        """The next forward covers slots first..first+rows-1, writes query j of row i at
        positions[i, j], and attends over the first `kv_len` positions."""
        rows = positions.shape[0]
        self.ensure(max(kv_len, int(positions.max()) + 1))
        self._slots = slice(first, first + rows)
        self._index = torch.arange(first, first + rows, device=positions.device)[:, None]
        self._positions, self._kv_len = positions, kv_len

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """transformers' Cache.update: key and value are [rows, kv_heads, queries, head_dim]."""
        k, v = self.kv[layer_idx, 0], self.kv[layer_idx, 1]
        k[self._index, :, self._positions] = key.transpose(1, 2)
        v[self._index, :, self._positions] = value.transpose(1, 2)
        return k[self._slots, :, : self._kv_len], v[self._slots, :, : self._kv_len]

    def move(self, src: int, dst: int, length: int) -> None:
        self.kv[:, :, dst, :, :length] = self.kv[:, :, src, :, :length]

    def read(self, slot: int, start: int, end: int) -> torch.Tensor:
        """[layers, 2, kv_heads, end - start, head_dim], a copy."""
        return self.kv[:, :, slot, :, start:end].clone()

    def write(self, slot: int, start: int, blocks: torch.Tensor) -> None:
        self.ensure(start + blocks.shape[3])
        self.kv[:, :, slot, :, start : start + blocks.shape[3]] = blocks


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hit_tokens = self.miss_tokens = 0

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    @staticmethod
    def keys(tokens: list[int]) -> list[bytes]:
        """One key per full block: the hash of every token up to the block's end."""
        keys, h = [], hashlib.blake2b(digest_size=16)
        for end in range(BLOCK, len(tokens) + 1, BLOCK):
            h.update(b"".join(t.to_bytes(4, "little") for t in tokens[end - BLOCK : end]))
            keys.append(h.copy().digest())
        return keys

    def _hits(self, tokens: list[int]) -> list[bytes]:
        """Keys of the leading blocks cached, all but the last token: its logits start the generation."""
        hits = []
        for key in self.keys(tokens[:-1]):
            if key not in self._blocks:
                break
            hits.append(key)
        return hits

    def cached_length(self, tokens: list[int]) -> int:
        """The prefix length `lookup` would copy, with no change to statistics or recency."""
        return len(self._hits(tokens)) * BLOCK

    def lookup(self, tokens: list[int]) -> tuple[int, torch.Tensor | None]:
        """(cached prefix length, its keys and values)."""
        hits = self._hits(tokens)
        for key in hits:
            self._blocks.move_to_end(key)
        n = len(hits) * BLOCK
        self.hit_tokens += n
        self.miss_tokens += len(tokens) - n
        return n, torch.cat([self._blocks[k] for k in hits], dim=3) if hits else None

    def store(self, tokens: list[int], cache: SlotCache, slot: int) -> None:
        """Keep every full block of a prompt just prefilled into `slot`."""
        if self.max_bytes <= 0:
            return
        for i, key in enumerate(self.keys(tokens)):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            block = cache.read(slot, i * BLOCK, (i + 1) * BLOCK)
            self._blocks[key] = block
            self.bytes += block.numel() * block.element_size()
        while self.bytes > self.max_bytes and self._blocks:
            _, old = self._blocks.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
