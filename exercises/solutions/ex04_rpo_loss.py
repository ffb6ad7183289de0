"""Solution to exercise 04 · the RPO loss."""


def rpo_loss(policy_logps, ref_logps, rewards, log_z, tau):
    """½ · mean((ρ − (r/τ − log Ẑ))²): (B,) x 4 -> 0-dim."""
    residual = (policy_logps - ref_logps) - (rewards / tau - log_z)
    return 0.5 * (residual ** 2).mean()
