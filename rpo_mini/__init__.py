"""rpo_mini: Reward Partition Optimization (RPO) next to DRO, KTO and SFT, from scratch, on a tiny GPT."""

__version__ = "0.1.0"
