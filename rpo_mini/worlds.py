"""Toy worlds: procedural text the GPT learns from, prompt splits, rewards and a fluency check.

A world is generated from a seed in a fraction of a second, with no downloads and no torch:

    reviews     "the soup at the harbor cafe was" -> " really good , and the staff was friendly ."
                Items and places carry sentiment priors, so some prompts are mostly praised and
                others mostly panned: per-prompt reward distributions differ, which is where
                per-prompt normalisation (RPO's log Z(x), DRO's V(x)) matters.
    arithmetic  "17+25=" -> "42". A controlled fraction of the corpus answers are wrong, more
                often for hard prompts (carries, two-digit operands). The exact world: a
                response is 1 to 3 digits then end-of-text and nothing else can be written,
                so all 1110 responses can be enumerated (`responses`, `response_grammar`).

Text conventions (the tokenizer is a GPT-2-style byte-level BPE): lowercase ASCII; a reviews
prompt has no trailing space and its response starts with a space, with words and punctuation
separated by single spaces; an arithmetic response is the bare number. No end-of-text marker
inside strings: the tokenizer adds it. The text of a corpus document is prompt + response.

The reviews grammar (the generator and the fluency check are both built from the tables below,
so they cannot drift apart):

    response   = " " predicate ( connector clause )* " ."
    predicate  = adjphrase ( "and" adjphrase )*          -- continues "... was"
    adjphrase  = [intensifier] adjective | "not" [really|very|so|that] adjective
    clause     = subject "was" predicate | remark | insult
    connector  = ", and" | ", but" | "."

The generator writes 1 to 4 clauses (up to 5 off-policy), plus an occasional insult; the
fluency check accepts any number of clauses, so a model that writes longer reviews than the
corpus is not called broken for it.
"""

import math
import random
import re
import statistics
from dataclasses import dataclass, field
from typing import Callable

from . import rewards as R

WORLDS = ("reviews", "arithmetic")


@dataclass
class WorldConfig:
    name: str = field(default="reviews", metadata={"help": "the toy world: " + " or ".join(WORLDS)})
    seed: int = field(default=0, metadata={"help": "seed of the corpus, the prompts and their splits"})
    corpus_size: int = field(default=20000, metadata={"help": "documents in the pretraining corpus"})
    prior_strength: float = field(default=1.0, metadata={
        "help": "reviews: how much prompts differ in reward (0 = all prompts alike)"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out for validation"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of prompts held out for the final evaluation"})
    wrong_fraction: float = field(default=0.2, metadata={"help": "arithmetic: share of wrong answers in the corpus"})
    arithmetic_prompts: int = field(default=1000, metadata={"help": "arithmetic: how many distinct \"a+b=\" prompts"})
    max_operand: int = field(default=99, metadata={"help": "arithmetic: operands range over 0..max_operand"})


# =============================================================================================
# Reviews: tables

# Sentiment prior of each subject, as a logit: P(positive review) = sigmoid(item + place + noise).
ITEM_PRIORS = {
    "cake": 3.0, "coffee": 2.5, "curry": 2.0, "massage": 2.0, "pizza": 1.5, "steak": 1.5,
    "bread": 1.0, "soup": 1.0, "pasta": 0.5, "tea": 0.5, "burger": 0.0, "breakfast": 0.0,
    "salad": -0.5, "haircut": -1.0, "bed": -1.0, "sushi": -1.5, "room": -1.5,
    "fish": -2.0, "wifi": -2.5, "parking": -3.0,
}
PLACE_PRIORS = {
    "village bakery": 3.0, "city spa": 2.5, "grand hotel": 2.0, "lakeside lodge": 2.0,
    "harbor cafe": 1.5, "river inn": 1.5, "old mill pub": 1.0, "garden terrace": 1.0,
    "night market": 0.5, "sunset grill": 0.5, "uptown bistro": 0.0, "corner diner": 0.0,
    "rooftop bar": -0.5, "beach shack": -1.0, "food court": -1.5, "mall canteen": -1.5,
    "station bar": -2.0, "truck stop": -2.5, "airport lounge": -2.5, "central motel": -3.0,
}
PRIOR_NOISE = 0.5                  # std of a per-prompt logit offset drawn from the seed
PROMPT_TEMPLATE = "the {item} at the {place} was"

# Adjectives by sign, taken from the gold lexicon (the world's "true" sentiment), so the
# grammar also uses words the training reward does not know ("soggy", "superb").
POSITIVE_ADJECTIVES = sorted(w for w, v in R.GOLD_LEXICON.items() if v > 0 and w in (
    "amazing excellent fantastic wonderful great delicious friendly tasty cozy fresh good "
    "clean fast nice pleasant decent fine superb lovely charming").split())
NEGATIVE_ADJECTIVES = sorted(w for w, v in R.GOLD_LEXICON.items() if v < 0 and w in (
    "terrible awful horrible disgusting bad rude dirty boring bland cold dull mediocre slow "
    "soggy stale overpriced greasy noisy cramped").split())
INTENSIFIER_WORDS = ("extremely", "really", "very", "so", "quite", "slightly")
NEGATED_INTENSIFIERS = ("really", "very", "so", "that")   # "not that good", "not very good"
SUBJECTS = ("the staff", "the service", "the music", "the price", "the view", "the waiter",
            "the table", "the portion", "the wait", "the menu", "the decor", "the owner",
            "it", "everything")
POSITIVE_REMARKS = ("i loved it", "we loved it", "we enjoyed it", "i would recommend it",
                    "highly recommended", "worth every penny", "a real treat")
NEGATIVE_REMARKS = ("never again", "i would not recommend it", "what a waste of money",
                    "i want a refund", "avoid it", "i regret it", "a total disappointment")
INSULTS = tuple(f"{who} is {what}"
                for who in ("the owner", "the chef", "the manager", "the waiter")
                for what in ("an idiot", "a clown", "a moron", "a joke")) + (
          "what a joke", "what a dump", "pathetic losers", "total garbage")
CONNECTORS = (", and", ", but", ".")

# Generator knobs (π_ref's own samples; off-policy changes are listed in ReviewsWorld.sample_response).
CLAUSE_COUNT_WEIGHTS = {1: 0.30, 2: 0.35, 3: 0.22, 4: 0.13}
OFF_POLICY_CLAUSE_WEIGHTS = {1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2, 5: 0.2}
AGREE_RATE = 0.85         # a later clause shares the review's overall mood with this probability
REMARK_RATE = 0.3         # a later clause is a closing remark rather than "subject was ..."
NEGATION_RATE = 0.12      # an adjective phrase is "not <adjective of the other sign>"
NEGATED_INTENSIFIER_RATE = 0.3   # ... as "not really <adjective>": the training reward's blind spot
INTENSIFIER_RATE = 0.4    # an adjective phrase starts with an intensifier
SECOND_ADJECTIVE_RATE = 0.2   # "fresh and tasty"
INSULT_RATE = {True: 0.01, False: 0.15}   # by mood: bad experiences draw more insults
OFF_POLICY_PRIOR_SCALE = 0.5     # off-policy writers share the subjects' reputations half as much
OFF_POLICY_INSULT_FACTOR = 2     # ... and insult twice as often


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _alternatives(phrases):
    """A regex group matching any of the phrases exactly (longest first)."""
    return "(?:" + "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True)) + ")"


def _reviews_grammar():
    """Compile the grammar in the module docstring into one regex, from the same tables."""
    adjective = _alternatives(POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES)
    adjphrase = (f"(?:(?:{_alternatives(INTENSIFIER_WORDS)} )?{adjective}"
                 f"|not (?:{_alternatives(NEGATED_INTENSIFIERS)} )?{adjective})")
    predicate = f"{adjphrase}(?: and {adjphrase})*"
    clause = (f"(?:{_alternatives(SUBJECTS)} was {predicate}"
              f"|{_alternatives(POSITIVE_REMARKS + NEGATIVE_REMARKS + INSULTS)})")
    return re.compile(f" {predicate}(?: {_alternatives(CONNECTORS)} {clause})* \\.")


REVIEWS_GRAMMAR = _reviews_grammar()


# =============================================================================================
# Shared machinery


class World:
    """What every world offers; the subclasses fill in the text and the rewards."""

    name: str = ""
    default_reward: str = ""
    gold_reward: str = ""
    gold_floor: float = 0.0        # the gold score of a failure: what a non-fluent sample counts as
    off_policy_logprob = None      # (prompt, response) -> log μ(response | prompt) of the off-policy generator

    def __init__(self, cfg: WorldConfig, prompts: list[str]):
        self.cfg = cfg
        self.train_prompts, self.val_prompts, self.test_prompts = split_prompts(prompts, cfg)
        # Every prompt, held-out ones included, appears in the pretraining corpus: held out
        # means unseen during *alignment*. Documents are spread evenly over the prompts.
        rng = random.Random(f"{self.name}-corpus-{cfg.seed}")
        self.corpus: list[tuple[str, str]] = [
            (p, self.sample_response(p, rng))
            for p in (prompts[i % len(prompts)] for i in range(cfg.corpus_size))]
        rng.shuffle(self.corpus)

    def sample_response(self, prompt: str, rng: random.Random, off_policy: bool = False) -> str:
        raise NotImplementedError

    def rewards(self) -> dict[str, Callable[[str, str], float]]:
        """name -> f(prompt, response) for every reward of this world."""
        raise NotImplementedError

    def score(self, prompt: str, response: str) -> dict[str, float]:
        """Every reward of this world for one (prompt, response), by name."""
        return {name: f(prompt, response) for name, f in self.rewards().items()}

    def is_fluent(self, prompt: str, response: str) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def responses(self) -> list[str] | None:
        """Every possible response, in an exact world (see `rpo_mini.exact`); None where the
        response space is too large to enumerate."""
        return None

    def response_grammar(self, enc) -> tuple:
        """Token ids allowed at each response position (`GPTConfig.response_grammar`); () = any."""
        return ()


def split_prompts(prompts: list[str], cfg: WorldConfig):
    """Shuffle with the seed and cut into disjoint (train, val, test) lists."""
    shuffled = sorted(prompts)
    random.Random(f"split-{cfg.seed}").shuffle(shuffled)
    n_test = round(len(shuffled) * cfg.test_fraction)
    n_val = round(len(shuffled) * cfg.val_fraction)
    return shuffled[n_test + n_val:], shuffled[n_test:n_test + n_val], shuffled[:n_test]


def reward_spread(world: World, prompts: list[str], k: int = 32, seed: int = 0,
                  reward: str | None = None) -> tuple[float, float]:
    """(between, within) for one reward: the std over prompts of the per-prompt mean, and the
    mean over prompts of the within-prompt std, from k of π_ref's samples per prompt. RPO's
    per-prompt normalisation matters when `between` is not small next to `within`."""
    rng = random.Random(seed)
    f = world.rewards()[reward or world.default_reward]
    means, stds = [], []
    for prompt in prompts:
        values = [f(prompt, world.sample_response(prompt, rng)) for _ in range(k)]
        means.append(statistics.fmean(values))
        stds.append(statistics.pstdev(values))
    return statistics.pstdev(means), statistics.fmean(stds)


# =============================================================================================
# Reviews


class ReviewsWorld(World):
    """Short reviews of (item, place) subjects with sentiment priors; see the module docstring."""

    name = "reviews"
    default_reward = "composite"
    gold_reward = "gold"
    gold_floor = -1.0              # tanh's floor: as bad as the most negative non-toxic review

    def __init__(self, cfg: WorldConfig):
        rng = random.Random(f"reviews-priors-{cfg.seed}")
        self.logits = {}   # prompt -> logit of P(positive), before scaling by prior_strength
        for item, a in ITEM_PRIORS.items():
            for place, b in PLACE_PRIORS.items():
                prompt = PROMPT_TEMPLATE.format(item=item, place=place)
                self.logits[prompt] = a + b + rng.gauss(0.0, PRIOR_NOISE)
        super().__init__(cfg, list(self.logits))

    def prior(self, prompt: str, off_policy: bool = False) -> float:
        """P(the generator writes a positive review) for this prompt."""
        if prompt not in self.logits:
            raise ValueError(f"not a reviews prompt of this world: {prompt!r}")
        strength = self.cfg.prior_strength * (OFF_POLICY_PRIOR_SCALE if off_policy else 1.0)
        return _sigmoid(strength * self.logits[prompt])

    def sample_response(self, prompt: str, rng: random.Random, off_policy: bool = False) -> str:
        """One review continuation. off_policy=True differs from the corpus in three ways:
        the subject priors are half as strong (logit * 0.5), the clause count is uniform over
        1..5 instead of mostly short (1..4), and insults are twice as frequent."""
        positive = rng.random() < self.prior(prompt, off_policy)
        weights = OFF_POLICY_CLAUSE_WEIGHTS if off_policy else CLAUSE_COUNT_WEIGHTS
        n_clauses = rng.choices(list(weights), list(weights.values()))[0]
        insult_rate = INSULT_RATE[positive] * (OFF_POLICY_INSULT_FACTOR if off_policy else 1)

        mood = positive   # the opening clause always carries the review's overall mood
        parts = [_predicate(mood, rng)]
        for _ in range(n_clauses - 1):
            previous, mood = mood, (positive if rng.random() < AGREE_RATE else not positive)
            if rng.random() < REMARK_RATE:
                parts += [".", rng.choice(POSITIVE_REMARKS if mood else NEGATIVE_REMARKS)]
            else:
                # a change of mood is mostly marked with ", but"; "." or ", and" continue one
                connector = rng.choice((", but", ", but", ".") if mood != previous
                                       else (", and", "."))
                parts += [connector, f"{rng.choice(SUBJECTS)} was {_predicate(mood, rng)}"]
        if rng.random() < insult_rate:
            at = 1 + 2 * rng.randrange(len(parts) // 2 + 1)   # after any clause
            parts[at:at] = [".", rng.choice(INSULTS)]
        return " " + " ".join(parts) + " ."

    def rewards(self) -> dict[str, Callable[[str, str], float]]:
        return {"sentiment": R.sentiment, "sentiment_mean": R.sentiment_mean,
                "toxicity": R.toxicity, "length": R.length,
                "composite": R.composite, "gold": R.gold}

    def is_fluent(self, prompt: str, response: str) -> bool:
        """Is the response a sentence of the reviews grammar (any number of clauses), with no
        word repeated back to back ("good good")?"""
        if REVIEWS_GRAMMAR.fullmatch(response) is None:
            return False
        tokens = response.split(" ")
        return all(a != b for a, b in zip(tokens, tokens[1:]))

    def describe(self) -> str:
        responses = [r for _, r in self.corpus]
        n_words = [len(R.words(r)) for r in responses]
        priors = [self.prior(p) for p in self.train_prompts]
        between, within = reward_spread(self, self.train_prompts[:40])
        return "\n".join([
            f"reviews world (seed {self.cfg.seed}, prior_strength {self.cfg.prior_strength})",
            f"  prompts: {len(ITEM_PRIORS)} items x {len(PLACE_PRIORS)} places = "
            f"{len(self.logits)}, split {len(self.train_prompts)} / {len(self.val_prompts)} / "
            f"{len(self.test_prompts)} (train / val / test)",
            f"  grammar: predicate (connector clause)* ' .'; {len(POSITIVE_ADJECTIVES)} + "
            f"{len(NEGATIVE_ADJECTIVES)} adjectives, {len(SUBJECTS)} subjects, "
            f"{len(POSITIVE_REMARKS) + len(NEGATIVE_REMARKS)} remarks, {len(INSULTS)} insults",
            f"  corpus: {len(responses)} documents, {len(set(responses))} distinct responses, "
            f"{min(n_words)}-{max(n_words)} words (mean {statistics.fmean(n_words):.1f}), "
            f"{statistics.fmean(R.is_toxic('', r) for r in responses):.1%} toxic",
            f"  P(positive) over train prompts: {min(priors):.2f} to {max(priors):.2f}",
            f"  composite spread over 40 train prompts: between {between:.2f}, "
            f"within {within:.2f} (ratio {between / within:.2f})",
            f"  rewards: {', '.join(self.rewards())} "
            f"(default {self.default_reward}, gold {self.gold_reward})",
        ])


def _adjphrase(positive, rng):
    """"really good", "cold", or a negated adjective of the other sign: "not bad" is positive."""
    if rng.random() < NEGATION_RATE:
        adjective = rng.choice(NEGATIVE_ADJECTIVES if positive else POSITIVE_ADJECTIVES)
        if rng.random() < NEGATED_INTENSIFIER_RATE:
            return f"not {rng.choice(NEGATED_INTENSIFIERS)} {adjective}"
        return f"not {adjective}"
    adjective = rng.choice(POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES)
    if rng.random() < INTENSIFIER_RATE:
        return f"{rng.choice(INTENSIFIER_WORDS)} {adjective}"
    return adjective


def _predicate(positive, rng):
    """One adjective phrase, sometimes two joined by "and" (never the same adjective twice)."""
    first = _adjphrase(positive, rng)
    if rng.random() < SECOND_ADJECTIVE_RATE:
        second = _adjphrase(positive, rng)
        if second.split()[-1] != first.split()[-1]:
            return f"{first} and {second}"
    return first


# =============================================================================================
# Arithmetic


MAX_DIGITS = 3   # an arithmetic response is 1 to 3 digits, then end-of-text


class ArithmeticWorld(World):
    """"a+b=" -> "c". The corpus is wrong on purpose, more often for harder prompts.

    The exact world: a response is one to MAX_DIGITS digits then end-of-text, every digit its
    own token, and the model may write nothing else (`response_grammar`), so the response
    space — 10 + 100 + 1000 = 1110 strings — can be enumerated and every quantity summed."""

    name = "arithmetic"
    default_reward = "partial"
    gold_reward = "correct"

    def __init__(self, cfg: WorldConfig):
        if not 1 <= cfg.max_operand <= 449:
            raise ValueError("max_operand must be in 1..449 so every answer has 1 to 3 digits")
        pairs = [(a, b) for a in range(cfg.max_operand + 1) for b in range(cfg.max_operand + 1)]
        random.Random(f"arithmetic-prompts-{cfg.seed}").shuffle(pairs)
        prompts = [f"{a}+{b}=" for a, b in pairs[:cfg.arithmetic_prompts]]
        # normalise the difficulty weights so the corpus error rate is wrong_fraction on average
        self.mean_weight = statistics.fmean(_difficulty_weight(p) for p in prompts)
        super().__init__(cfg, prompts)

    def error_rate(self, prompt: str) -> float:
        """P(the corpus answer is wrong): wrong_fraction scaled by the prompt's difficulty,
        blended with a flat rate as prior_strength goes from 1 to 0."""
        s = self.cfg.prior_strength
        relative = (1 - s) + s * _difficulty_weight(prompt) / self.mean_weight
        return min(0.95, max(0.0, self.cfg.wrong_fraction * relative))

    def prior(self, prompt: str, off_policy: bool = False) -> float:
        """P(the generator answers this prompt correctly)."""
        return 1.0 - (self.cfg.wrong_fraction if off_policy else self.error_rate(prompt))

    def sample_response(self, prompt: str, rng: random.Random, off_policy: bool = False) -> str:
        """The sum, or a wrong answer. off_policy=True uses the same error rate for every
        prompt (wrong_fraction, ignoring difficulty) and draws wrong answers uniformly from
        0..2*max_operand instead of plausible slips."""
        a, b = R.operands(prompt)
        if rng.random() < self.prior(prompt, off_policy):
            return str(a + b)
        if not off_policy:
            return str(rng.choice(_plausible_mistakes(a, b)))
        while True:
            guess = rng.randrange(2 * self.cfg.max_operand + 1)
            if guess != a + b:
                return str(guess)

    def off_policy_logprob(self, prompt: str, response: str) -> float:
        """log μ(response | prompt) of the off-policy generator (`sample_response(off_policy=True)`):
        the sum with probability 1 − wrong_fraction, else one of the 2·max_operand other numbers
        of 0..2·max_operand, uniformly; −inf for anything it never writes."""
        a, b = R.operands(prompt)
        if not self.is_fluent(prompt, response) or int(response) > 2 * self.cfg.max_operand:
            return float("-inf")
        p = 1.0 - self.cfg.wrong_fraction if int(response) == a + b else \
            self.cfg.wrong_fraction / (2 * self.cfg.max_operand)
        return math.log(p) if p > 0 else float("-inf")

    def rewards(self) -> dict[str, Callable[[str, str], float]]:
        return {"correct": R.correct, "partial": R.partial}

    def responses(self) -> list[str]:
        """All digit strings of 1 to MAX_DIGITS digits, leading zeros included ("07" is a
        response the model can write; it is not fluent and never correct)."""
        return [str(n).zfill(d) for d in range(1, MAX_DIGITS + 1) for n in range(10 ** d)]

    def response_grammar(self, enc) -> tuple:
        """A digit first; then a digit or end-of-text; end-of-text forced after MAX_DIGITS digits."""
        digits = tuple(enc.encode_single_token(str(d)) for d in range(10))
        return (digits,) + (digits + (enc.eot_token,),) * (MAX_DIGITS - 1) + ((enc.eot_token,),)

    def is_fluent(self, prompt: str, response: str) -> bool:
        """One to three digits, no leading zero (except "0" itself)."""
        return re.fullmatch(r"0|[1-9][0-9]{0,2}", response) is not None

    def describe(self) -> str:
        wrong = statistics.fmean(R.correct(p, r) == 0.0 for p, r in self.corpus)
        by_difficulty = {}
        for p in self.train_prompts:
            by_difficulty.setdefault(difficulty(p), []).append(self.error_rate(p))
        rates = ", ".join(f"{d}: {statistics.fmean(v):.2f} ({len(v)} prompts)"
                          for d, v in sorted(by_difficulty.items()))
        return "\n".join([
            f"arithmetic world (seed {self.cfg.seed}, prior_strength {self.cfg.prior_strength})",
            f"  prompts: a+b= with a, b in 0..{self.cfg.max_operand}, "
            f"{len(self.train_prompts)} / {len(self.val_prompts)} / {len(self.test_prompts)} "
            f"(train / val / test)",
            f"  corpus: {len(self.corpus)} documents, {wrong:.1%} wrong answers "
            f"(target {self.cfg.wrong_fraction:.0%})",
            f"  error rate by difficulty (carries + both two-digit): {rates}",
            f"  responses: 1 to {MAX_DIGITS} digits then end-of-text, {len(self.responses())} in all",
            f"  rewards: {', '.join(self.rewards())} "
            f"(default {self.default_reward}, gold {self.gold_reward})",
        ])


def difficulty(prompt):
    """The number of carries, plus one when both operands have two or more digits
    (0..3 for operands below 100)."""
    a, b = R.operands(prompt)
    both_long = a >= 10 and b >= 10
    carries, carry = 0, 0
    while a or b:
        carry = (a % 10 + b % 10 + carry) // 10
        carries += carry
        a, b = a // 10, b // 10
    return carries + both_long


def _difficulty_weight(prompt):
    return 3 ** difficulty(prompt)   # each step of difficulty triples the chance of a slip


def _plausible_mistakes(a, b):
    """Wrong answers a careless adder writes: off by one, off by ten, or a forgotten carry
    (17+25 -> 32). The forgotten carry, when there is one, is listed three times: it is the
    typical slip."""
    total = a + b
    mistakes = [c for c in (total - 1, total + 1, total - 10, total + 10) if c >= 0]
    no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in zip(f"{a:03d}", f"{b:03d}")))
    if no_carry != total:
        mistakes += [no_carry] * 3
    return mistakes


# =============================================================================================


WORLD_CLASSES = {"reviews": ReviewsWorld, "arithmetic": ArithmeticWorld}


def make_world(cfg: WorldConfig) -> World:
    """Build the world named by cfg.name."""
    if cfg.name not in WORLD_CLASSES:
        raise ValueError(f"unknown world {cfg.name!r}; valid worlds: {', '.join(WORLDS)}")
    return WORLD_CLASSES[cfg.name](cfg)
