"""Solution to exercise 05 · the DRO loss."""


def dro_loss(policy_logps, ref_logps, rewards, values, tau):
    """½ · mean((ρ − (r − V)/τ)²): (B,) x 4 -> 0-dim, gradient to the log-probs and the values."""
    residual = (policy_logps - ref_logps) - (rewards - values) / tau
    return 0.5 * (residual ** 2).mean()
