"""The BPE trainer and its tiktoken wrapper."""

import random
from collections import Counter

import pytest
import regex

from rpo_mini.tokenizer import EOT, load_encoding, make_encoding, save_ranks, train_bpe

CORPUS = [f"the {w} at the {p} was {a} ." for w in ("soup", "coffee", "pasta", "bread")
          for p in ("harbor cafe", "old mill", "night market") for a in ("good", "awful", "really nice")]


def test_merges_are_the_most_frequent_pairs_on_a_hand_made_example():
    # Words (GPT-2 split keeps the leading space): "aaab" x1 -> pairs aa:2, ab:1 ; " ab" x3 -> " a":3, ab:3
    ranks = train_bpe(["aaab", " ab ab ab"], vocab_size=256 + 2 + 1)
    merges = [t for t, r in sorted(ranks.items(), key=lambda kv: kv[1]) if r >= 256]
    # counts by hand: ab = 1 + 3 = 4, " a" = 3, aa = 2  -> first merge "ab"
    assert merges[0] == b"ab"
    # after it: " a"+"b" is gone (" ab" is now [" ", "ab"]): " " + "ab" = 3, aa = 2 -> " ab"
    assert merges[1] == b" ab"


def _repeated_words(rng):  # few words, each many times: counts stay large
    return " ".join(rng.choice(["banana", "bandana", "cabana", "ban"]) for _ in range(300))


def _rare_words(rng):  # many words seen once: pair counts fall to 1 and rise again as merges go on
    return " ".join("".join(rng.choice("abc") for _ in range(rng.randint(2, 7))) for _ in range(200))


@pytest.mark.parametrize("corpus,merges", [(_repeated_words, 12), (_rare_words, 60)])
def test_merge_counts_agree_with_a_naive_recount(corpus, merges):
    """After each merge, the chosen pair is the most frequent in a from-scratch recount."""
    text = corpus(random.Random(0))
    ranks = train_bpe([text], vocab_size=256 + merges + 1)
    enc = make_encoding(ranks)
    vocab = {r: t for t, r in ranks.items()}
    words = [list(w.encode()) for w in regex.findall(enc._pat_str, text)]
    assert len(ranks) > 256 + 5
    for rank in range(256, len(ranks)):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        top = max(counts.values())
        a, b = next(p for p in sorted(counts) if counts[p] == top)  # our tie-break: smallest ids
        assert vocab[a] + vocab[b] == vocab[rank]
        words = [_merge_naive(w, (a, b), rank) for w in words]


def _merge_naive(w, pair, new):
    out, i = [], 0
    while i < len(w):
        if tuple(w[i:i + 2]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(w[i])
            i += 1
    return out


def test_round_trip_on_the_corpus_and_on_random_unicode(tmp_path):
    enc = make_encoding(train_bpe(CORPUS, vocab_size=300))
    for text in CORPUS:
        assert enc.decode(enc.encode_ordinary(text)) == text
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x2FFF),
                                       rng.randrange(0x1F300, 0x1F64F)])) for _ in range(rng.randrange(1, 40)))
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_learned_tokens_compress_the_corpus():
    enc = make_encoding(train_bpe(CORPUS, vocab_size=400))
    n_tokens = sum(len(enc.encode_ordinary(t)) for t in CORPUS)
    n_bytes = sum(len(t.encode()) for t in CORPUS)
    assert n_tokens < n_bytes / 3


def test_saved_file_reloads_to_identical_ids(tmp_path):
    enc = make_encoding(train_bpe(CORPUS, vocab_size=320))
    path = tmp_path / "tok.tiktoken"
    save_ranks(enc._mergeable_ranks, str(path))
    loaded = load_encoding(str(path))
    for text in CORPUS + ["unseen words: zebra crossing!"]:
        assert loaded.encode_ordinary(text) == enc.encode_ordinary(text)
    assert loaded.encode(EOT, allowed_special="all") == [enc.n_vocab - 1]
    # a different tokenizer saved to the same path must not come back stale from tiktoken's cache
    other = make_encoding(train_bpe(["zzz yyy zzz yyy"], vocab_size=260))
    save_ranks(other._mergeable_ranks, str(path))
    assert load_encoding(str(path)).n_vocab == other.n_vocab


def test_vocab_size_below_bytes_is_refused():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(CORPUS, vocab_size=100)


def test_the_smallest_vocabulary_is_the_bytes_and_end_of_text():
    from rpo_mini.tokenizer import train_bpe

    ranks = train_bpe(["abab abab"], 257)
    assert len(ranks) == 256 and all(ranks[bytes([b])] == b for b in range(256))  # no merge fits
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe(["abab"], 256)
