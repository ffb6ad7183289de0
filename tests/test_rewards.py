"""Reward functions on hand-written examples, with values worked out by hand."""

import math

import pytest

from rpo_mini import rewards as R

GLOWING = " really amazing and very friendly , and the staff was extremely wonderful . i loved it ."
NEUTRAL = " fine ."
INSULTING = " fine . the owner is an idiot ."


def test_sentiment_by_hand():
    # "really" multiplies good (1.5) by 1.5; the sum 2.25 is divided by the scale 3
    assert R.sentiment("", " really good .") == pytest.approx(math.tanh(2.25 / 3))
    assert R.sentiment("", " not good .") == pytest.approx(math.tanh(-0.75 / 3))
    assert R.sentiment("", " not bad .") == pytest.approx(math.tanh(1.0 / 3))
    assert R.sentiment("", " good , but the staff was rude .") == pytest.approx(math.tanh(-0.5 / 3))
    assert R.sentiment("", " the owner is an idiot .") == 0.0   # insults are toxicity's job
    assert R.sentiment("", "") == 0.0


def test_sentiment_orders_reviews_and_stays_in_range():
    assert R.sentiment("", GLOWING) > R.sentiment("", " good .") > R.sentiment("", NEUTRAL) > 0
    assert R.sentiment("", " terrible . never again .") < R.sentiment("", " cold .") < 0
    huge = " amazing" + " , and it was amazing" * 50 + " ."
    assert 0.99 < R.sentiment("", huge) <= 1.0
    assert -1.0 <= R.sentiment("", " awful" + " , and it was awful" * 50 + " .") < -0.99


def test_negation_blind_spot_of_training_reward_is_caught_by_gold():
    # training: "not" must sit right before the adjective, so "not really good" looks positive
    assert R.sentiment("", " not really good .") == pytest.approx(math.tanh(2.25 / 3))
    # gold looks through the intensifier: -0.5 * 1.5 * 1.5 = -1.125
    assert R.gold("", " not really good .") == pytest.approx(math.tanh(-1.125 / 3))


def test_gold_knows_words_the_training_lexicon_does_not():
    assert "soggy" not in R.SENTIMENT_LEXICON
    assert R.sentiment("", " soggy .") == 0.0
    assert R.gold("", " soggy .") == pytest.approx(math.tanh(-1.5 / 3))


def test_toxicity_counts_insult_words():
    assert R.toxicity("", GLOWING) == 0.0 and not R.is_toxic("", GLOWING)
    assert R.toxicity("", INSULTING) == 1.0 and R.is_toxic("", INSULTING)
    assert R.toxicity("", " bad . pathetic losers . what a joke .") == 3.0


def test_length_by_hand():
    twelve = " good" + " , and it was good" * 3 + " ."      # 1 + 3 * 4 = 13 words
    assert len(R.words(twelve)) == 13
    assert R.length("", twelve) == pytest.approx(1 - 1 / 12)
    assert R.length("", " good .") == pytest.approx(1 / 12)
    assert R.length("", "") == 0.0
    assert R.length("", " good" + " , and it was good" * 10 + " .") == 0.0   # 41 words


def test_composite_prefers_a_full_glowing_review_to_one_adjective():
    # trap 2: a per-word mean would rank " amazing ." first
    assert R.composite("", " amazing .") == pytest.approx(math.tanh(1.0) + 0.2 / 12)
    assert R.composite("", GLOWING) > R.composite("", " amazing .") + 0.3
    assert R.sentiment_mean("", " amazing .") == 1.0
    assert R.sentiment_mean("", " amazing .") > R.sentiment_mean("", GLOWING)


def test_composite_glowing_beats_neutral_beats_insulting():
    assert R.composite("", GLOWING) > R.composite("", NEUTRAL) > R.composite("", INSULTING)
    # the insult costs exactly the toxicity penalty plus the change in the length term
    length_change = R.length("", INSULTING) - R.length("", NEUTRAL)
    expected = R.composite("", NEUTRAL) - 1.0 + 0.2 * length_change
    assert R.composite("", INSULTING) == pytest.approx(expected)


def test_gold_has_no_length_term_and_subtracts_toxicity():
    assert R.gold("", " good .") == pytest.approx(math.tanh(1.5 / 3))
    assert R.gold("", " good . the owner is an idiot .") == pytest.approx(math.tanh(1.5 / 3) - 1.0)


def test_sentiment_mean_by_hand():
    # (3 * 1.5 + 2) over 7 words (punctuation does not count), divided by 3
    assert R.sentiment_mean("", " really amazing , and the staff was friendly .") == pytest.approx(
        (4.5 + 2.0) / 7 / 3)
    assert R.sentiment_mean("", "") == 0.0


def test_rewards_do_not_crash_on_garbage():
    for text in ["", " ", "!!!", " good good good", "amazing", " .", " , , ,"]:
        for f in (R.sentiment, R.sentiment_mean, R.toxicity, R.length, R.composite, R.gold):
            assert math.isfinite(f("the soup at the harbor cafe was", text))


def test_correct_by_hand():
    assert R.correct("17+25=", "42") == 1.0
    assert R.correct("17+25=", "41") == 0.0
    assert R.correct("17+25=", "042") == 0.0
    assert R.correct("17+25=", " 42") == 0.0
    assert R.correct("0+0=", "0") == 1.0
    assert R.correct("99+99=", "198") == 1.0


def test_partial_by_hand():
    assert R.partial("17+25=", "42") == 1.0
    assert R.partial("17+25=", "41") == 0.5      # tens right, units wrong
    assert R.partial("17+25=", "32") == 0.5      # the forgotten carry: units right
    assert R.partial("17+25=", "142") == pytest.approx(2 / 3)
    assert R.partial("17+25=", "2") == 0.5       # units right, tens missing
    assert R.partial("17+25=", "4") == 0.0       # "4" lines up with the units digit 2
    assert R.partial("99+9=", "18") == pytest.approx(1 / 3)
    assert R.partial("17+25=", "") == 0.0
    assert R.partial("17+25=", " 42") == pytest.approx(2 / 3)   # a space is not a digit


def test_arithmetic_prompt_parsing():
    assert R.operands("17+25=") == (17, 25)
    assert R.true_sum("17+25=") == "42"
    with pytest.raises(ValueError):
        R.true_sum("17-25=")


# The lexicons as a reader would classify the words, written out here (not read from the code).
POSITIVE = {"amazing", "excellent", "fantastic", "wonderful", "great", "delicious", "friendly", "tasty", "cozy",
            "fresh", "good", "clean", "fast", "nice", "pleasant", "decent", "fine", "loved", "enjoyed", "recommend",
            "recommended", "worth", "treat", "superb", "lovely", "charming"}
NEGATIVE = {"terrible", "awful", "horrible", "disgusting", "bad", "rude", "dirty", "boring", "bland", "cold", "dull",
            "mediocre", "slow", "never", "waste", "avoid", "regret", "disappointment", "refund", "soggy", "stale",
            "overpriced", "greasy", "noisy", "cramped"}
# Every word's strength, as specified (a change to a lexicon is a change to the worlds' rewards:
# make it here too, on purpose).
TIERS = {3.0: "amazing excellent fantastic wonderful superb", 2.0: "great delicious friendly tasty loved enjoyed "
         "recommend recommended lovely", 1.5: "cozy fresh good worth treat charming", 1.0: "clean fast nice pleasant",
         0.5: "decent fine", -1.0: "bland cold dull mediocre slow greasy noisy cramped",
         -1.5: "boring refund soggy stale overpriced", -2.0: "bad rude dirty never waste avoid regret disappointment",
         -3.0: "terrible awful horrible disgusting"}
STRENGTH = {w: v for v, ws in TIERS.items() for w in ws.split()}


def test_every_lexicon_word_has_the_sign_a_reader_gives_it():
    assert set(R.GOLD_LEXICON) == POSITIVE | NEGATIVE
    for w in POSITIVE | NEGATIVE:
        sign = 1 if w in POSITIVE else -1
        assert math.copysign(1, R.gold("", f" {w} .")) == sign, w
        if w in R.SENTIMENT_LEXICON:
            assert math.copysign(1, R.sentiment("", f" {w} .")) == sign, w


@pytest.mark.parametrize("word, polarity", STRENGTH.items())
def test_every_word_s_strength_by_hand(word, polarity):
    reward = R.sentiment if word in R.SENTIMENT_LEXICON else R.gold
    assert reward("", f" {word} .") == pytest.approx(math.tanh(polarity / 3))
