"""Syn-GRPO data server: synthesis of new samples during training, off the trainer's critical path.

`protocol` (requests, results, the backend and synthesizer interfaces), `workers` (bounded queues and
synthesis threads: the in-process backend and the server's engine).
"""
