"""The Label Studio side of seggpt-ls: HTTP contract, label configs, prompt pool, results, and the CLI."""
