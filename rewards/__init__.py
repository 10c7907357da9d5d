"""Rewards: pure functions (completion text, Sample) -> score in [0, 1] with named parts."""
