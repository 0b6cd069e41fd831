"""Hands out the blocks of the paged KV cache, and shares full blocks between sequences that
start with the same tokens (prefix caching).

A full block whose keys and values have been computed is registered under its content: the
key is (id of the previous block's content, the block's tokens), so a block matches only when
the whole prefix before it matches too, and equality of keys is exact (no hash collisions).
Blocks whose last user has finished go to a free list in least-recently-used order but keep
their content: a later request with the same system prompt, or the next turn of a
conversation, finds them there and skips recomputing them. They are overwritten only when the
free list's oldest block is taken for new tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

_Key = tuple[int, tuple[int, ...]]


@dataclass
class _SeqBlocks:
    table: list[int] = field(default_factory=list)
    n_registered: int = 0  # leading blocks of `table` whose content is registered (or was hit)
    last_content: int = -1  # content id of table[n_registered - 1]; -1 before the first block


@dataclass
class PrefixCacheStats:
    queried_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of those, found already computed

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class BlockManager:
    def __init__(self, n_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        self.n_blocks = n_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._refs = [0] * n_blocks
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(n_blocks))
        self._key_of: dict[int, _Key] = {}  # block -> its registered content
        self._content_of: dict[int, int] = {}  # block -> content id
        self._block_of: dict[_Key, int] = {}  # content -> block
        self._next_content = 0
        self._seqs: dict[str, _SeqBlocks] = {}
        self.stats = PrefixCacheStats()

    # -- queries ---------------------------------------------------------------------------
    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by running sequences (0..1)."""
        return 1.0 - self.n_free / self.n_blocks

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def table(self, seq_id: str) -> list[int]:
        return self._seqs[seq_id].table

    def has(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def _hits(self, tokens: list[int], namespace: int = 0) -> list[int]:
        """Blocks already holding the leading full blocks of `tokens`, in order."""
        if not self.prefix_caching:
            return []
        found, parent, bs = [], _root(namespace), self.block_size
        # The last token is always computed (its logits are needed), so a prompt never hits
        # completely: only blocks that end before it count.
        for start in range(0, len(tokens) - 1 - bs + 1, bs):
            block = self._block_of.get((parent, tuple(tokens[start : start + bs])))
            if block is None:
                break
            found.append(block)
            parent = self._content_of[block]
        return found

    def can_allocate(self, tokens: list[int], reserve: int = 0, namespace: int = 0) -> bool:
        """Whether `allocate(tokens)` would succeed leaving `reserve` blocks free."""
        hits = self._hits(tokens, namespace)
        revived = sum(1 for b in hits if self._refs[b] == 0)  # hits sitting in the free list
        return self.n_free - revived - (self.blocks_for(len(tokens)) - len(hits)) >= reserve

    # -- changes ---------------------------------------------------------------------------
    def allocate(self, seq_id: str, tokens: list[int], namespace: int = 0) -> int:
        """Give `seq_id` blocks for all of `tokens`; return how many leading tokens are already
        computed (prefix-cache hits, whole blocks). Check `can_allocate` first.

        namespace: blocks computed in one namespace never match in another (keys and values
        under different LoRA adapters differ for the same tokens)."""
        if seq_id in self._seqs:
            raise ValueError(f"sequence {seq_id!r} already has blocks")
        hits = self._hits(tokens, namespace)
        seq = _SeqBlocks(last_content=_root(namespace))
        for b in hits:
            self._take(b, keep_content=True)
            seq.table.append(b)
        seq.n_registered = len(hits)
        if hits:
            seq.last_content = self._content_of[hits[-1]]
        for _ in range(self.blocks_for(len(tokens)) - len(hits)):
            seq.table.append(self._take(self._oldest_free()))
        self._seqs[seq_id] = seq
        self.stats.queried_tokens += len(tokens)
        self.stats.hit_tokens += len(hits) * self.block_size
        return len(hits) * self.block_size

    def grow(self, seq_id: str, n_tokens: int) -> bool:
        """Make room for `n_tokens` tokens in all; False (nothing changed) if blocks ran out."""
        seq = self._seqs[seq_id]
        need = self.blocks_for(n_tokens) - len(seq.table)
        if need > self.n_free:
            return False
        for _ in range(need):
            seq.table.append(self._take(self._oldest_free()))
        return True

    def register(self, seq_id: str, tokens: list[int], n_computed: int | None = None) -> None:
        """The first `n_computed` of `tokens` (default: all) of `seq_id` now have their keys
        and values computed: register the full blocks among them so later sequences can share
        them."""
        if not self.prefix_caching:
            return
        seq, bs = self._seqs[seq_id], self.block_size
        n = len(tokens) if n_computed is None else n_computed
        while (seq.n_registered + 1) * bs <= n:
            i = seq.n_registered
            key = (seq.last_content, tuple(tokens[i * bs : (i + 1) * bs]))
            owner = self._block_of.get(key)
            if owner is None:
                owner = seq.table[i]
                self._key_of[owner] = key
                self._content_of[owner] = self._next_content
                self._block_of[key] = owner
                self._next_content += 1
            # When another block already holds this content (two requests with the same
            # prompt computed at once), ours stays unregistered and the chain goes on from the
            # registered twin, so the blocks after it can still be found.
            seq.last_content = self._content_of[owner]
            seq.n_registered += 1

    def free(self, seq_id: str) -> None:
        """Release the blocks of a finished, aborted or preempted sequence."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            return
        # Last block first: the free list is taken from its oldest end, so a prefix outlives
        # the blocks that continue it.
        for b in reversed(seq.table):
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free[b] = None

    # -- internals -------------------------------------------------------------------------
    def _oldest_free(self) -> int:
        if not self._free:
            raise RuntimeError("no free KV blocks (check can_allocate/grow first)")
        return next(iter(self._free))

    def _take(self, b: int, keep_content: bool = False) -> int:
        """One more user of block b; a free block taken for new tokens forgets its content."""
        if self._refs[b] == 0:
            del self._free[b]
            if not keep_content and b in self._key_of:
                del self._block_of[self._key_of.pop(b)]
                del self._content_of[b]
        self._refs[b] += 1
        return b


def _root(namespace: int) -> int:
    """The parent content id of a namespace's first block: negative, so never a real block's."""
    return -1 - namespace
