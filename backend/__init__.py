"""The Label Studio side of seggpt-ls: HTTP contract, label configs, prompt pool, results, and the CLI.

The torch-free boundary. The web process (`serve`, `/setup`, `/predict`, `/webhook`) and the control worker
(`seggpt-ls worker --control`) never import torch: they need no GPU stack, the web process answers Label Studio's
1 s and 3 s timeouts at once, and the control worker runs the backend's own jobs beside the model workers. Torch-free
are every module of `backend` (the CLI too: `serve` and the control worker run from it, and it builds every
command's parser), the whole `worker` package (`gpu_worker` and `model_jobs` too: the control worker is a
`SegGptWorker` without a runtime), and the light modules of `seggpt_core` (`errors`, `marks`, `embedding`, `images`,
`limits`, `host_memory`, `weights_digest`, `weights_files`, `research.tasks`, ...). Torch-side are
`seggpt_core.{model, build, weights, predictor, transforms, prompt_tuning, loss, upsampled_mask, component_scores}`
and `seggpt_core.research.{training, evaluation}`.

Imports sit at the top of each file, except where a torch-free module calls into the torch side: that import sits
inside the function that needs it, marked `# torch:`. (Also inside functions: matplotlib, the optional `report`
extra, and huggingface_hub, which reads its environment when it is imported; and label_studio_sdk's
`LabelInterface` and brush converter, marked `# slow import:`: they take 0.45 s of CPU to import (the converter
pulls in nltk), which every `seggpt-ls` command and worker would pay at its start, used or not.) `tests/test_structure.py` starts the
web app and serves those routes in a fresh process, and fails if torch was imported; `tests/test_job_context.py`
checks the control worker's process.
"""
