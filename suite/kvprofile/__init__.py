"""KV-transfer profiling: KV size per request, a link probe (copy / NCCL / gloo / NIXL), per-request attribution of
P/D TTFT from connector metrics, and the crossover where transfer cost outweighs co-location's penalty.

Only `probe` and `prefill` need torch; everything else is stdlib + the model sizing in suite.modelcfg.
"""
