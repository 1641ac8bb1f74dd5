"""The Label Studio side of seggpt-ls: HTTP contract, label configs, prompt pool, results, and the CLI.

The torch-free boundary. The web process (`serve`, `/setup`, `/predict`, `/webhook`) never imports torch: it needs
no GPU stack, and answers Label Studio's 1 s and 3 s timeouts at once. Torch-free are every module of `backend` (the
CLI too: `serve` runs from it, and it builds every command's parser), the `worker` package with its queue-side
modules (`queue`, `waiting`, `payloads`, `task_io`, `prompt_sets`, `runtime`, ...), and the light modules of
`seggpt_core` (`errors`, `marks`, `embedding`, `limits`, `weights_digest`, `weights_files`, ...). Torch-side are
`seggpt_core.{model, build, weights, predictor, transforms, prompt_tuning, loss, upsampled_mask, component_scores}`,
`seggpt_core.research.{training, evaluation}`, `worker.model_jobs` and `worker.gpu_worker`.

Imports sit at the top of each file, except where a torch-free module calls into the torch side: that import sits
inside the function that needs it, marked `# torch:`. (Also inside functions: matplotlib, the optional `report`
extra.) `tests/test_structure.py` starts the web app and serves those routes in a fresh process, and fails if
torch was imported.
"""
