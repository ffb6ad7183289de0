"""A byte-level BPE trained on the world's corpus and wrapped in a real `tiktoken.Encoding`.

Training (Sennrich et al. 2016; byte-level as in GPT-2): split text into words with the
GPT-2 pattern (digits kept apart, see SPLIT_PATTERN), start from the 256 bytes, and repeatedly
merge the most frequent adjacent pair. Pair counts are updated incrementally — only the words
that contain the merged pair are touched — so a ~2k vocabulary trains in about a second.

The result is saved as a `.tiktoken` rank file (`base64(token) rank` per line) and loaded
back with `tiktoken.load.load_tiktoken_bpe`; tiktoken then does the fast encoding. Nothing
is downloaded. No torch here.
"""

import base64
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable

import regex  # tiktoken's own dependency; `re` lacks the \p{L} classes of the GPT-2 pattern
import tiktoken
from tiktoken.load import load_tiktoken_bpe

from .files import atomic_open

# GPT-2's pre-tokenizer split, except that every digit is a pre-token of its own (` ?\p{N}`, not
# ` ?\p{N}+`), as LLaMA's tokenizer does: "125" is always the three tokens 1, 2, 5, never a
# learned "12" + "5". An answer is then written digit by digit, and the arithmetic world's
# response space (digit strings) is the same for every tokenizer trained on it.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, pattern: str = SPLIT_PATTERN) -> dict[bytes, int]:
    """Learn merges until the vocabulary (256 bytes + merges + EOT) has `vocab_size` tokens.

    Returns tiktoken's `mergeable_ranks`: token bytes -> rank (byte b has rank b, the i-th
    merge rank 256 + i). Ties in pair frequency go to the smallest pair of token ids, so
    training is deterministic. Stops early once no pair occurs twice."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + end-of-text), got {vocab_size}")
    word_freq = Counter(w for text in texts for w in regex.findall(pattern, text))
    words = [list(w.encode("utf-8")) for w in word_freq]
    freqs = list(word_freq.values())
    vocab = [bytes([b]) for b in range(256)]

    pair_counts: Counter = Counter()
    where = defaultdict(set)  # pair -> indices of the words that contain it
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(i)

    while len(vocab) < vocab_size - 1:  # keep one id for EOT
        if not pair_counts:
            break
        best = max(pair_counts, key=lambda p: (pair_counts[p], -p[0], -p[1]))
        if pair_counts[best] < 2:
            break
        new_id = len(vocab)
        vocab.append(vocab[best[0]] + vocab[best[1]])
        for i in list(where[best]):
            w, f = words[i], freqs[i]
            for pair in zip(w, w[1:]):  # forget this word's old pairs ...
                pair_counts[pair] -= f
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
                where[pair].discard(i)
            words[i] = w = _merge(w, best, new_id)
            for pair in zip(w, w[1:]):  # ... and count its new ones
                pair_counts[pair] += f
                where[pair].add(i)
        where.pop(best, None)
    return {token: rank for rank, token in enumerate(vocab)}


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def make_encoding(ranks: dict[bytes, int], name: str = "rpo_mini") -> tiktoken.Encoding:
    """A tiktoken Encoding over our ranks, with `<|endoftext|>` as the id after the last rank."""
    return tiktoken.Encoding(name=name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})


def save_ranks(ranks: dict[bytes, int], path: str) -> None:
    """Write the `.tiktoken` rank file atomically (a temporary file, then a rename)."""
    with atomic_open(path) as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")


def load_encoding(path: str) -> tiktoken.Encoding:
    """Load a `.tiktoken` file saved by `save_ranks`.

    tiktoken caches files by *path*; passing the content hash makes it notice when a new
    tokenizer was trained into the same path instead of returning the stale cached one."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return make_encoding(load_tiktoken_bpe(path, expected_hash=digest))

