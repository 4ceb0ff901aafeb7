"""pdsuite: P/D disaggregation vs co-located serving, for vLLM and SGLang.

Data flow, one package per stage: plan -> deploy (compose) -> load -> scrape -> normalise -> stats -> report.
Framework specifics live only in suite/frameworks/.
"""

__version__ = "0.1.0"
