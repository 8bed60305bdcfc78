"""lm-eval's IFEval scorer for ``ifeval_local``, imported once NLTK's punkt_tab is findable offline."""

from selbench.ifeval import agg_inst_level_acc, process_results

__all__ = ["agg_inst_level_acc", "process_results"]
