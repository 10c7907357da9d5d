"""The Gradio demo app (`mmrl demo`): see every task, try a model on it, watch a spy game and a training run.

One module per job: `app` assembles the tabs and launches the server; `safety` holds the path and upload
limits; `task_view` is the Tasks tab's logic without any UI (draw, show, score), `tasks_tab`, `model_tab`,
`spy_tab`, `runs_tab` and `datasets_tab` are the tabs. Gradio is imported only here, never by `mmrl`.
"""
