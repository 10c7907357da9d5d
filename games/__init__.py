"""Multi-turn, multi-role self-play games (Who-is-the-spy) and their stage schedulers."""
