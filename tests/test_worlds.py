"""The toy worlds: determinism, splits, text conventions, fluency, priors, speed."""

import math
import random
import re
import statistics
import time

import pytest

from rpo_mini import rewards as R
from rpo_mini.worlds import WORLDS, World, WorldConfig, make_world


@pytest.fixture(scope="module")
def reviews():
    return make_world(WorldConfig(name="reviews"))


@pytest.fixture(scope="module")
def arithmetic():
    return make_world(WorldConfig(name="arithmetic"))


def all_prompts(world):
    return world.train_prompts + world.val_prompts + world.test_prompts


def spread_ratio(world, n_prompts=40, k=48, seed=0):
    """std over prompts of the mean composite / mean over prompts of the within-prompt std."""
    rng = random.Random(seed)
    means, stds = [], []
    for prompt in world.train_prompts[:n_prompts]:
        values = [R.composite(prompt, world.sample_response(prompt, rng)) for _ in range(k)]
        means.append(statistics.fmean(values))
        stds.append(statistics.pstdev(values))
    return statistics.pstdev(means) / statistics.fmean(stds)


# ---------------------------------------------------------------------------------------------
# Both worlds


def test_unknown_world_names_the_valid_ones():
    assert WORLDS == ("reviews", "arithmetic")
    with pytest.raises(ValueError, match="reviews.*arithmetic"):
        make_world(WorldConfig(name="chess"))


@pytest.mark.parametrize("name", WORLDS)
def test_deterministic_under_seed_and_different_across_seeds(name):
    a = make_world(WorldConfig(name=name, seed=3, corpus_size=2000))
    b = make_world(WorldConfig(name=name, seed=3, corpus_size=2000))
    c = make_world(WorldConfig(name=name, seed=4, corpus_size=2000))
    assert a.corpus == b.corpus
    assert (a.train_prompts, a.val_prompts, a.test_prompts) == \
        (b.train_prompts, b.val_prompts, b.test_prompts)
    assert a.corpus != c.corpus
    assert a.test_prompts != c.test_prompts


@pytest.mark.parametrize("name", WORLDS)
def test_splits_are_disjoint_and_cover_the_corpus_prompts(name):
    world = make_world(WorldConfig(name=name, corpus_size=5000))
    train, val, test = map(set, (world.train_prompts, world.val_prompts, world.test_prompts))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(world.train_prompts) == len(train)   # no duplicates inside a split either
    n = len(train) + len(val) + len(test)
    assert len(val) == len(test) == round(0.2 * n)
    assert {p for p, _ in world.corpus} == train | val | test


@pytest.mark.parametrize("name", WORLDS)
def test_world_interface(name):
    world = make_world(WorldConfig(name=name, corpus_size=100))
    assert isinstance(world, World) and world.name == name
    rewards = world.rewards()
    assert world.default_reward in rewards and world.gold_reward in rewards
    prompt, response = world.corpus[0]
    scores = world.score(prompt, response)
    assert set(scores) == set(rewards)
    assert all(scores[k] == f(prompt, response) for k, f in rewards.items())
    assert len(world.corpus) == 100
    assert str(len(world.train_prompts)) in world.describe()


@pytest.mark.parametrize("name", WORLDS)
def test_make_world_is_fast(name):
    start = time.perf_counter()
    make_world(WorldConfig(name=name, corpus_size=20000))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("name", WORLDS)
def test_every_corpus_document_and_off_policy_sample_is_fluent(name, reviews, arithmetic):
    world = reviews if name == "reviews" else arithmetic
    assert all(world.is_fluent(p, r) for p, r in world.corpus)
    rng = random.Random(0)
    prompts = world.train_prompts
    samples = [(p, world.sample_response(p, rng, off_policy=True))
               for p in (prompts[i % len(prompts)] for i in range(2000))]
    assert [s for s in samples if not world.is_fluent(*s)] == []


# ---------------------------------------------------------------------------------------------
# Reviews


def test_reviews_text_conventions(reviews):
    for prompt in all_prompts(reviews):
        assert re.fullmatch(r"the [a-z ]+ at the [a-z ]+ was", prompt), prompt
    for prompt, response in reviews.corpus:
        assert response.startswith(" ") and response.endswith(" .")
        assert "  " not in response and response == response.rstrip()
        assert re.fullmatch(r"[a-z ,.]+", response), response
        assert "endoftext" not in response


def test_reviews_corpus_is_varied(reviews):
    responses = [r for _, r in reviews.corpus]
    assert len(set(responses)) > 10000
    n_words = [len(R.words(r)) for r in responses]
    assert min(n_words) >= 1 and max(n_words) <= 40
    assert 5 <= statistics.fmean(n_words) <= 12
    assert statistics.quantiles(n_words, n=10)[-1] >= 14   # a real tail of long reviews
    toxic = statistics.fmean(R.is_toxic(p, r) for p, r in reviews.corpus)
    assert 0.03 <= toxic <= 0.15
    text = " ".join(responses)
    assert "not really" in text and "soggy" in text   # the gold reward's cases do occur


def test_reviews_fluency_rejects_broken_text(reviews):
    prompt = reviews.train_prompts[0]
    broken = [
        "",                                         # empty
        " .",                                       # no words
        " really good , and the staff was friendly",   # missing final period
        " really good , and the staff was friendly . ",  # trailing space
        " good good .",                             # repeated word
        " really good , and the staff was .",       # clause cut in the middle
        " really good , and the staff .",
        " really .",
        " really  good .",                          # double space
        "really good .",                            # no leading space
        " gud .",                                   # unknown word
        " Good .",                                  # uppercase
        " good ,",
        " good , , and it was nice .",
        " good , and , and it was nice .",
        " good . the owner is an idiot",
        " not .",
        " not not good .",
        " good and .",
        " good<|endoftext|>",
    ]
    for text in broken:
        assert not reviews.is_fluent(prompt, text), text


def test_reviews_fluency_accepts_grammatical_text_of_any_length(reviews):
    prompt = reviews.train_prompts[0]
    good = [
        " good .",
        " really good , and the staff was friendly .",
        " not that good . never again .",
        " not bad and very fresh , but the wait was slow . i would recommend it .",
        " awful . what a joke .",
    ]
    # trap 3: more clauses than the generator ever writes is still grammatical
    good.append(" good" + " , and the staff was friendly . we loved it" * 8 + " .")
    for text in good:
        assert reviews.is_fluent(prompt, text), text


def test_prompts_really_differ_and_prior_strength_turns_it_off():
    # trap 1: per-prompt means must spread at least half as much as responses within a prompt
    strong = make_world(WorldConfig(name="reviews", corpus_size=10))
    assert spread_ratio(strong) >= 0.5
    flat = make_world(WorldConfig(name="reviews", corpus_size=10, prior_strength=0.0))
    assert all(flat.prior(p) == 0.5 for p in flat.train_prompts)
    assert spread_ratio(flat) < 0.25


def test_reviews_priors_show_in_the_corpus(reviews):
    good = {p for p in all_prompts(reviews) if reviews.prior(p) > 0.9}
    bad = {p for p in all_prompts(reviews) if reviews.prior(p) < 0.1}
    assert len(good) > 30 and len(bad) > 30

    def mean_over(prompts, f):
        return statistics.fmean(f(p, r) for p, r in reviews.corpus if p in prompts)

    assert mean_over(good, R.composite) > 0.4
    assert mean_over(bad, R.composite) < -0.4
    # insults follow bad subjects
    assert mean_over(bad, R.is_toxic) > 3 * mean_over(good, R.is_toxic)


def test_reviews_off_policy_differs_as_documented(reviews):
    rng = random.Random(0)
    prompts = reviews.train_prompts[:100]
    on = [(p, reviews.sample_response(p, rng)) for p in prompts for _ in range(20)]
    off = [(p, reviews.sample_response(p, rng, off_policy=True))
           for p in prompts for _ in range(20)]

    def mean(samples, f):
        return statistics.fmean(f(p, r) for p, r in samples)

    assert mean(off, lambda p, r: len(R.words(r))) > mean(on, lambda p, r: len(R.words(r))) + 1
    assert mean(off, R.is_toxic) > 1.4 * mean(on, R.is_toxic)
    # flatter priors: other writers agree less about which subjects are good
    def distance_from_a_coin(off_policy):
        return statistics.fmean(abs(reviews.prior(p, off_policy) - 0.5) for p in prompts)

    assert distance_from_a_coin(off_policy=True) < distance_from_a_coin(off_policy=False) - 0.05
    # ... which shows in the text: loved subjects get more negative reviews (about 19 % vs 10 %)
    loved = {p for p in prompts if reviews.prior(p) > 0.9}

    def negative_share(samples):
        return mean([s for s in samples if s[0] in loved], lambda p, r: R.sentiment(p, r) < 0)

    assert negative_share(off) > negative_share(on) + 0.04


def test_reviews_describe_mentions_the_numbers(reviews):
    text = reviews.describe()
    assert "400" in text and "20000 documents" in text and "ratio" in text


# ---------------------------------------------------------------------------------------------
# Arithmetic


def carries(a, b):
    """Independent check: how many columns overflow when adding a and b."""
    count, carry = 0, 0
    for x, y in zip(reversed(f"{a:03d}"), reversed(f"{b:03d}")):
        carry = 1 if int(x) + int(y) + carry >= 10 else 0
        count += carry
    return count


def test_arithmetic_text_conventions(arithmetic):
    for prompt in all_prompts(arithmetic):
        assert re.fullmatch(r"[1-9]?[0-9]\+[1-9]?[0-9]=", prompt), prompt
    for prompt, response in arithmetic.corpus:
        assert re.fullmatch(r"0|[1-9][0-9]{0,2}", response), response


def test_arithmetic_corpus_has_the_controlled_error_rate(arithmetic):
    wrong = statistics.fmean(R.correct(p, r) == 0.0 for p, r in arithmetic.corpus)
    assert wrong == pytest.approx(0.2, abs=0.02)


def test_arithmetic_mistakes_are_plausible(arithmetic):
    kinds = set()
    for prompt, response in arithmetic.corpus:
        a, b = map(int, prompt[:-1].split("+"))
        answer = int(response)
        if answer == a + b:
            continue
        forgot_carry = int("".join(str((int(x) + int(y)) % 10)
                                   for x, y in zip(f"{a:03d}", f"{b:03d}")))
        if answer == forgot_carry:
            kinds.add("carry")
        else:
            assert abs(answer - (a + b)) in (1, 10), (prompt, response)
            kinds.add(abs(answer - (a + b)))
    assert kinds == {"carry", 1, 10}


def test_arithmetic_harder_prompts_are_wrong_more_often(arithmetic):
    wrong_by_carries = {0: [], 1: [], 2: []}
    for prompt, response in arithmetic.corpus:
        a, b = map(int, prompt[:-1].split("+"))
        wrong_by_carries[carries(a, b)].append(R.correct(prompt, response) == 0.0)
    rates = [statistics.fmean(wrong_by_carries[c]) for c in (0, 1, 2)]
    assert rates[0] < 0.1 and rates[2] > 0.3
    assert rates[0] < rates[1] < rates[2]


def test_arithmetic_prior_strength_zero_makes_prompts_alike():
    world = make_world(WorldConfig(name="arithmetic", prior_strength=0.0, corpus_size=10))
    assert {world.error_rate(p) for p in world.train_prompts} == {0.2}


def test_arithmetic_off_policy_ignores_difficulty(arithmetic):
    rng = random.Random(0)
    easy = [p for p in arithmetic.train_prompts if carries(*map(int, p[:-1].split("+"))) == 0]
    hard = [p for p in arithmetic.train_prompts if carries(*map(int, p[:-1].split("+"))) == 2]

    def wrong_rate(prompts):
        return statistics.fmean(
            R.correct(p, arithmetic.sample_response(p, rng, off_policy=True)) == 0.0
            for p in prompts for _ in range(30))

    assert wrong_rate(easy) == pytest.approx(0.2, abs=0.05)
    assert wrong_rate(hard) == pytest.approx(0.2, abs=0.05)


def test_arithmetic_fluency(arithmetic):
    prompt = "17+25="
    for text in ["42", "0", "7", "198", "41"]:
        assert arithmetic.is_fluent(prompt, text), text
    for text in ["", "042", "00", "1000", " 42", "42 ", "4a", "-3", "4 2", "42."]:
        assert not arithmetic.is_fluent(prompt, text), text


def test_arithmetic_rewards_through_the_world(arithmetic):
    assert arithmetic.score("17+25=", "42") == {"correct": 1.0, "partial": 1.0}
    assert arithmetic.score("17+25=", "41") == {"correct": 0.0, "partial": 0.5}
    # graded training reward, exact correctness as gold
    assert (arithmetic.default_reward, arithmetic.gold_reward) == ("partial", "correct")


def test_arithmetic_off_policy_logprob_sums_to_one_over_every_writable_response(arithmetic):
    """Σ_y μ(y|x) over the whole response space (`responses()`, all 1110 digit strings) is 1,
    for easy and hard prompts and for the largest sum."""
    prompts = arithmetic.train_prompts[:5] + [f"{arithmetic.cfg.max_operand}+{arithmetic.cfg.max_operand}=", "0+0="]
    for prompt in prompts:
        total = sum(math.exp(arithmetic.off_policy_logprob(prompt, y)) for y in arithmetic.responses())
        assert total == pytest.approx(1.0, abs=1e-9), prompt


def test_arithmetic_off_policy_logprob_matches_the_generator_s_frequencies(arithmetic):
    """The empirical frequencies of `sample_response(off_policy=True)`: the correct answer about
    1 − wrong_fraction of the time, each of the 2·max_operand wrong ones about equally often, each
    within 4 binomial standard errors of exp(off_policy_logprob)."""
    prompt, n = "17+25=", 40000
    rng = random.Random(7)
    counts = {}
    for _ in range(n):
        y = arithmetic.sample_response(prompt, rng, off_policy=True)
        counts[y] = counts.get(y, 0) + 1
    w, m = arithmetic.cfg.wrong_fraction, arithmetic.cfg.max_operand
    assert set(counts) <= {str(v) for v in range(2 * m + 1)}  # nothing outside what μ covers
    assert math.exp(arithmetic.off_policy_logprob(prompt, "42")) == pytest.approx(1 - w, rel=1e-12)
    for y in ("42", "0", "41", "43", "7", "100", "198"):
        p = math.exp(arithmetic.off_policy_logprob(prompt, y))
        assert abs(counts.get(y, 0) / n - p) < 4 * math.sqrt(p * (1 - p) / n), (y, counts.get(y, 0) / n, p)
    wrong = [counts.get(str(v), 0) / n for v in range(2 * m + 1) if v != 42]
    assert len(wrong) == 2 * m and sum(wrong) == pytest.approx(w, abs=4 * math.sqrt(w * (1 - w) / n))


def test_arithmetic_off_policy_logprob_of_what_it_never_writes_is_minus_inf(arithmetic):
    m = arithmetic.cfg.max_operand
    for y in ("07", "00", "042", str(2 * m + 1), "999"):  # not fluent, or beyond 0..2·max_operand
        assert arithmetic.off_policy_logprob("17+25=", y) == -math.inf, y
    assert arithmetic.off_policy_logprob("17+25=", str(2 * m)) == pytest.approx(
        math.log(arithmetic.cfg.wrong_fraction / (2 * m)))


def test_gold_floor_is_minus_one_for_reviews_and_zero_for_arithmetic(reviews, arithmetic):
    assert reviews.gold_floor == -1.0 and arithmetic.gold_floor == 0.0
    # reviews: tanh's floor, the gold of the most negative non-toxic review
    assert R.gold("the cake at the cafe was", " awful .") > reviews.gold_floor
    # the reviews' off-policy generator's probabilities are unknown; the arithmetic world's are not
    assert reviews.off_policy_logprob is None and callable(arithmetic.off_policy_logprob)
    # no fluent arithmetic answer scores below the floor (exactly correct: 1, else 0)
    assert min(R.correct("17+25=", y) for y in arithmetic.responses() if arithmetic.is_fluent("17+25=", y)) == 0.0


@pytest.mark.parametrize("prompt, want", [("3+4=", 0), ("10+10=", 1), ("9+10=", 0), ("15+17=", 2), ("55+55=", 3),
                                          ("99+1=", 2), ("5+5=", 1)])
def test_difficulty_by_hand(prompt, want):
    """Carries, plus one when both operands have two digits or more (10 counts as two)."""
    from rpo_mini.worlds import difficulty

    assert difficulty(prompt) == want


def test_the_error_rate_is_capped_at_95_percent():
    world = make_world(WorldConfig(name="arithmetic", wrong_fraction=0.9, prior_strength=1.0))
    rates = [world.error_rate(p) for p in world.train_prompts]
    hardest = max(world.train_prompts, key=lambda p: world.error_rate(p))
    assert max(rates) == 0.95 and 0.9 * 27 / world.mean_weight > 0.95  # the cap binds on the hardest
    assert world.error_rate(hardest) == 0.95
