"""Research code: synthetic episodes, training of the small model, and evaluation. Inference never imports it
(`predictor`, `model`, `weights` and `transforms` stand alone; a test checks it)."""
