"""Difficulty selection (ThinkLite-VL): score a pool per policy, keep the hard samples.

`mcts` counts the MCTS iterations the policy needs to solve a sample (batched across trees);
`passrate` is the cheap proxy 1 − pass rate; `select` runs either over a dataset folder and writes
`difficulty.jsonl`, the selected dataset and the threshold sweep (docs/thinklite.md).
"""

from mmrl.selection.judge import STEP_INSTRUCTION, CriticVerifier, ProcessorCodec, TaskVerifier, critic_verdict
from mmrl.selection.mcts import MCTSParams, SearchResult, SearchStats, search
from mmrl.selection.passrate import PassRateParams, PassRateResult, pass_rates
from mmrl.selection.records import DIFFICULTY_FILE, DifficultyLog, KeepRule, difficulty_value, spearman, sweep
from mmrl.selection.select import SELECTED_DIR, SelectReport, load_pool, select_pool

__all__ = [
    "DIFFICULTY_FILE",
    "CriticVerifier",
    "SELECTED_DIR",
    "STEP_INSTRUCTION",
    "DifficultyLog",
    "KeepRule",
    "MCTSParams",
    "PassRateParams",
    "PassRateResult",
    "ProcessorCodec",
    "SearchResult",
    "SearchStats",
    "SelectReport",
    "TaskVerifier",
    "critic_verdict",
    "difficulty_value",
    "load_pool",
    "pass_rates",
    "search",
    "select_pool",
    "spearman",
    "sweep",
]
