"""The Mamba language-model path: fine-tuning on LLM-Adapters records, commonsense evaluation, and the
WordNet-based proxies (``mamba-proxy`` LM, ``commonsense_proxy`` task set).

* ``train``: ``LMRecipe``, ``train_lm`` (reference recipe, per-method lr groups, ``on_epoch`` for the pruner);
* ``evaluate``: batched likelihood ranking and greedy generation, ``evaluate_tasks`` per task + average;
* ``loading``: ``load_lm`` (model + tokenizer + adapters), ``resolve_tokenizer``;
* ``wordnet`` / ``proxy_tasks`` / ``pretrain``: WordNet reader, task-set builder, proxy pretraining;
* ``finetune``: ``hybridsearch finetune`` / ``python -m hybridsearch.lm.finetune`` (train, save adapters, evaluate).
"""

from .evaluate import evaluate_tasks, likelihood_accuracy
from .loading import load_lm, resolve_tokenizer
from .train import LMRecipe, LMTrainResult, reference_lr, train_lm

__all__ = ["LMRecipe", "LMTrainResult", "evaluate_tasks", "likelihood_accuracy", "load_lm", "reference_lr",
           "resolve_tokenizer", "train_lm"]
